#!/usr/bin/python3
"""PyTorch side of scripts/bench_conv.lua: trains each small CNN (given as
name:batch:layers, ';'-separated, in bench_conv.lua's notation) on the same
Fashion-MNIST images with Adam 1e-3, one warm-up epoch then timed epochs, and
prints one JSON line {name: {median samples/s, cpu_us per sample}}."""
import argparse, gzip, json, os, statistics, sys, time

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F


def images(path):
    with gzip.open(path, "rb") as f:
        b = f.read()
    n, r, c = (int.from_bytes(b[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(b, np.uint8, offset=16).reshape(n, 1, r, c)


def labels(path):
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=8)


def build(layers):
    mods = []
    for tok in layers.split():
        kind, v = tok[0], [int(t) for t in tok[1:].split(",") if t]
        if kind == "c":
            mods.append(tnn.Conv2d(v[0], v[1], v[2], stride=v[3], padding=v[4]))
        elif kind == "r":
            mods.append(tnn.ReLU())
        elif kind == "p":
            mods.append(tnn.MaxPool2d(v[0]))
        elif kind == "f":
            mods.append(tnn.Flatten())
        else:
            mods.append(tnn.Linear(v[0], v[1]))
    return tnn.Sequential(*mods)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", required=True)
    ap.add_argument("--dir", default=os.environ.get("LUALPS_DATA", "/usr/share/datasets/fashion-mnist"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.from_numpy(images(a.dir + "/train-images-idx3-ubyte.gz")[:a.samples].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels(a.dir + "/train-labels-idx1-ubyte.gz")[:a.samples].astype(np.int64))
    n = x.shape[0]
    out = {}
    for item in a.models.split(";"):
        name, bs, layers = item.split(":")
        bs = int(bs)
        torch.manual_seed(0)
        model = build(layers)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)

        def epoch():
            perm = torch.randperm(n, generator=g)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(0, n, bs):
                j = perm[i:i + bs]
                xb, yb = x[j], y[j]
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                loss.item()
            return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6

        epoch()  # warm-up
        runs = [epoch() for _ in range(a.epochs)]
        out[name] = {"median": statistics.median(r[0] for r in runs),
                     "cpu_us": statistics.median(r[1] for r in runs)}
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""PyTorch side of scripts/bench_train.lua: trains one benchmark model on the
same Fashion-MNIST data, batch size and optimizer as lualps, at one thread
split, and prints one JSON line (samples/s per timed epoch, peak RSS, the
threads in effect). Debian's torch runs its own ops and oneDNN convolutions on
OpenMP (--intra) and its matrix products in OpenBLAS's pthreads (--blas); it
has no MKL. Run by the Lua script, which tries every split; usable alone:
bench_train_torch.py --model a --intra 1 --blas 1. Model d is built from
the arch list given as --arch (JSON) by scripts/torch_interop.py's FROM_ARCH,
the module lualps' arch describes."""
import argparse, ctypes, gzip, json, os, statistics, sys, time

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F


def idx(path, images):
    with gzip.open(path, "rb") as f:
        b = f.read()
    if images:
        n, r, c = (int.from_bytes(b[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(b, np.uint8, offset=16).reshape(n, r * c)
    return np.frombuffer(b, np.uint8, offset=8)


def vmhwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices="abcd", required=True)
    ap.add_argument("--arch", help="model d: its arch list (JSON)")
    ap.add_argument("--intra", type=int, default=1, help="torch intra-op (OpenMP) threads")
    ap.add_argument("--blas", type=int, default=1, help="OpenBLAS threads")
    ap.add_argument("--samples", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("LUALPS_DATA", "/usr/share/datasets/fashion-mnist"))
    a = ap.parse_args()
    torch.set_num_threads(a.intra)
    torch.set_num_interop_threads(1)  # eager training never forks inter-op work
    openblas = ctypes.CDLL("libopenblas.so.0")  # the library torch's libblas.so.3 resolves to
    openblas.openblas_set_num_threads(a.blas)
    torch.manual_seed(0)
    x = torch.from_numpy(idx(a.dir + "/train-images-idx3-ubyte.gz", True).astype(np.float32) / 255.0)
    y = torch.from_numpy(idx(a.dir + "/train-labels-idx1-ubyte.gz", False).astype(np.int64))
    if a.model == "b":  # two classes (labels 0 and 1), 9600 images as a ModelSet500 task
        keep = (y == 0) | (y == 1)
        x, y = x[keep][:9600].contiguous(), y[keep][:9600].contiguous()
        model = tnn.Sequential(tnn.Linear(784, 64), tnn.ReLU(), tnn.Linear(64, 64), tnn.ReLU(), tnn.Linear(64, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        bs = 64
    elif a.model == "a":
        model = tnn.Sequential(tnn.Linear(784, 256), tnn.ReLU(), tnn.Linear(256, 128), tnn.ReLU(), tnn.Linear(128, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        bs = 128
    elif a.model == "d":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from torch_interop import sequential_from_arch
        x = x.reshape(-1, 1, 28, 28)
        model = sequential_from_arch(json.loads(a.arch))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        bs = 128
    else:
        x = x.reshape(-1, 1, 28, 28)
        model = tnn.Sequential(tnn.Conv2d(1, 32, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                               tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2),
                               tnn.Flatten(), tnn.Linear(3136, 128), tnn.ReLU(), tnn.Linear(128, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        bs = 128
    if a.samples:
        x, y = x[:a.samples].contiguous(), y[:a.samples].contiguous()
    n = x.shape[0]
    g = torch.Generator().manual_seed(1)

    def epoch():
        perm = torch.randperm(n, generator=g)
        total, correct = 0.0, 0
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            j = perm[i:i + bs]
            xb, yb = x[j], y[j]
            opt.zero_grad()
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(j)
            correct += (out.argmax(1) == yb).sum().item()
        return n / (time.perf_counter() - t0), total / n, correct / n

    epoch()  # warm-up: first-call costs are not steady state
    runs = [epoch() for _ in range(a.epochs)]
    sps = [r[0] for r in runs]
    print(json.dumps({"side": "torch", "model": a.model, "intra": torch.get_num_threads(),
                      "blas": openblas.openblas_get_num_threads(), "samples": n,
                      "samples_per_second": sps, "median": statistics.median(sps),
                      "loss": runs[-1][1], "accuracy": runs[-1][2], "rss_mb": vmhwm_mb(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    sys.exit(main())

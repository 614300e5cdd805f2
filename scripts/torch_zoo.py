#!/usr/bin/env python3
"""Train a zoo of small PyTorch models the way PyTorch users train them, for
scripts/heldout_zoos.lua (a held-out zoo: no lualps training set sees them).

    /usr/bin/python3 scripts/torch_zoo.py PLAN.json

PLAN.json (written by heldout_zoos.lua, which also decides every draw):
{"threads": 1, "models": [{"id", "task", "data", "out", "family", "seed",
 "optimizer", "lr", "epochs", "batch_size", "n_train", ...}]}
- data: a safetensors file of the task (x, y, xt, yt: images N x 784 in
  [0, 1], labels 1..k as floats, lualps' convention), already in its domain;
- family "mlp": "hidden" (widths); family "cnn": "channels" [c1, c2],
  "kernel" (of the first conv), "down" ("pool": 2x2 max pooling after each
  conv; "stride": convs of stride 2);
- optimizer "sgd" (momentum 0.9) or "adam".

Each model is an nn.Sequential with PyTorch's default initialization, seeded
by torch.manual_seed(seed), trained on the first n_train images of a
seeded permutation, and written to `out` with torch_interop.save: its
state_dict, "lualps.arch" (arch_of) and the metadata id, task, family,
optimizer and test_accuracy (strings, as safetensors metadata are). A model
whose file exists is skipped, so an interrupted build resumes. Prints one
line per model: "<id> <family> <optimizer> test_accuracy=<a>".
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_interop import arch_of, load, save  # noqa: E402


def build(m, k):
    nn = torch.nn
    if m["family"] == "mlp":
        layers, prev = [], 784
        for w in m["hidden"]:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        return nn.Sequential(*layers, nn.Linear(prev, k)), None
    c1, c2 = m["channels"]
    ks = m["kernel"]
    if m["down"] == "pool":
        layers = [nn.Conv2d(1, c1, ks, padding=ks // 2), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    else:
        layers = [nn.Conv2d(1, c1, ks, stride=2, padding=ks // 2), nn.ReLU(),
                  nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c2 * 49, k)), (1, 28, 28)


def train_one(m, d):
    torch.manual_seed(m["seed"])
    x, y = d["x"], d["y"].long() - 1
    k = int(y.max()) + 1
    model, shape = build(m, k)
    if shape:
        x, xt = x.reshape(-1, *shape), d["xt"].reshape(-1, *shape)
    else:
        xt = d["xt"]
    idx = torch.randperm(len(y))[:m["n_train"]]
    x, y = x[idx], y[idx]
    if m["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=m["lr"], momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=m["lr"])
    model.train()
    for _ in range(m["epochs"]):
        for b in torch.randperm(len(y)).split(m["batch_size"]):
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == d["yt"].long() - 1).float().mean().item()
    meta = {"format": "pt", "lualps.arch": json.dumps(arch_of(model, shape), separators=(",", ":")),
            "id": m["id"], "task": str(m["task"]), "family": m["family"], "optimizer": m["optimizer"],
            "test_accuracy": repr(acc)}
    save(m["out"], model.state_dict(), meta)
    return acc


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    torch.set_num_threads(int(plan.get("threads", 1)))
    data, data_path = None, None
    for m in plan["models"]:
        if os.path.exists(m["out"]):
            continue
        if m["data"] != data_path:  # models come task by task: keep one task's data
            data, _ = load(m["data"])
            data_path = m["data"]
        acc = train_one(m, data)
        print("%s %s %s test_accuracy=%.4f" % (m["id"], m["family"], m["optimizer"], acc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

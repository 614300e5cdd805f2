#!/usr/bin/env python3
"""PyTorch side of the safetensors interop check (driven by check_torch_interop.lua).

    torch_interop.py DIR

1. If DIR/lualps_mlp.safetensors exists (written by lualps' export), build the
   matching torch.nn.Sequential(Linear, ReLU, ..., Linear), load_state_dict it
   (strict), run it on x from DIR/lualps_io.safetensors and compare with the
   lualps output y there. Prints "reverse_max_abs_diff=<v>".
2. Train a small MLP on Fashion-MNIST (random data if the Debian dataset is
   absent) and write, for lualps to check:
     torch_seq.safetensors   nn.Sequential naming: 0.weight, 0.bias, 2.weight, ...
     torch_fc.safetensors    fc1/fc2/fc3 naming, the last layer without bias
     torch_io.safetensors    x and both models' outputs y_seq, y_fc (float32)
     torch_half.safetensors  F16 and BF16 payloads (tensor.half()/.bfloat16()
                             raw bytes) with their exact float32 values, and F64

Safetensors files are written and read here by hand (struct + json): Debian has
no python3-safetensors. Exit status 1 if the reverse check exceeds --tol.
"""
import argparse
import gzip
import json
import os
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
FASHION = "/usr/share/datasets/fashion-mnist"


def raw_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: same bits as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def save(path, tensors, metadata=None):
    """The reference layout: sorted by dtype size (largest first) then name,
    contiguous offsets, header padded with spaces to a multiple of 8."""
    assert sys.byteorder == "little"
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in items:
        b = raw_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def load(path):
    """float32 tensors of a safetensors file, checking the layout lualps promises."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and 8 + n <= len(data), "header length %d" % n
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    buf = data[8 + n:]
    out, pos = {}, 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, e = info["data_offsets"]
        assert b == pos, "%s: offsets not contiguous" % name
        assert info["dtype"] == "F32", "%s: dtype %s" % (name, info["dtype"])
        shape = info["shape"]
        numel = 1
        for s in shape:
            numel *= s
        assert e - b == 4 * numel, "%s: %d bytes for shape %s" % (name, e - b, shape)
        out[name] = torch.frombuffer(bytearray(buf[b:e]), dtype=torch.float32).reshape(shape)
        pos = e
    assert pos == len(buf), "trailing bytes"
    names = [k for k, _ in sorted(header.items())]
    assert names == list(header.keys()), "tensors not in name order"
    return out, meta


def sequential_from_state(state):
    """nn.Sequential(Linear, ReLU, ..., Linear) shaped after '<i>.weight' entries."""
    idx = sorted(int(k.split(".")[0]) for k in state if k.endswith(".weight"))
    layers = []
    for j, i in enumerate(idx):
        w = state["%d.weight" % i]
        while len(layers) < i:  # ReLU fills the gaps between linear layers
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(w.shape[1], w.shape[0]))
    model = torch.nn.Sequential(*layers)
    model.load_state_dict(state, strict=True)
    return model


def reverse_check(d, tol):
    state, meta = load(os.path.join(d, "lualps_mlp.safetensors"))
    io, _ = load(os.path.join(d, "lualps_io.safetensors"))
    assert meta.get("format") == "pt", meta
    model = sequential_from_state(state).eval()
    with torch.no_grad():
        y = model(io["x"])
    diff = (y - io["y"]).abs().max().item()
    print("reverse_arch=%s" % "-".join([str(model[0].in_features)] +
                                       [str(m.out_features) for m in model if isinstance(m, torch.nn.Linear)]))
    print("reverse_max_abs_diff=%.9g" % diff)
    return diff <= tol


def read_idx(path, n):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        x = torch.frombuffer(bytearray(data[16:16 + n * rows * cols]), dtype=torch.uint8)
        return x.reshape(n, rows * cols).float() / 255.0
    return torch.frombuffer(bytearray(data[8:8 + n]), dtype=torch.uint8).long()


def data(n):
    img = os.path.join(FASHION, "t10k-images-idx3-ubyte.gz")
    lab = os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz")
    if os.path.exists(img) and os.path.exists(lab):
        return read_idx(img, n), read_idx(lab, n), "fashion-mnist t10k"
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g), "random"


class FC(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 24)
        self.fc2 = torch.nn.Linear(24, 16)
        self.fc3 = torch.nn.Linear(16, 10, bias=False)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def train(model, x, y, epochs=3):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def export(d):
    torch.manual_seed(0)
    x_all, y_all, source = data(2256)
    x_train, y_train, x = x_all[:2000], y_all[:2000], x_all[2000:]
    seq = torch.nn.Sequential(torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                              torch.nn.ReLU(), torch.nn.Linear(16, 10))
    fc = FC()
    acc_seq, acc_fc = train(seq, x_train, y_train), train(fc, x_train, y_train)
    seq.eval()
    fc.eval()
    with torch.no_grad():
        y_seq, y_fc = seq(x), fc(x)
    meta = {"format": "pt", "source": "scripts/torch_interop.py", "data": source}
    save(os.path.join(d, "torch_seq.safetensors"), seq.state_dict(), meta)
    save(os.path.join(d, "torch_fc.safetensors"), fc.state_dict(), meta)
    save(os.path.join(d, "torch_io.safetensors"), {"x": x, "y_seq": y_seq, "y_fc": y_fc})
    special = torch.tensor([1.0, -2.0, 65504.0, 2.0 ** -24, 2.0 ** -14, 1.0 / 3.0, float("inf"),
                            float("-inf"), float("nan"), -0.0, 1e-3, 3.14159265])
    w = seq[0].weight.detach()
    half = {}
    for tag, t in (("w", w), ("special", special)):
        half[tag + "_f16"] = t.half()
        half[tag + "_f16_as_f32"] = t.half().float()
        half[tag + "_bf16"] = t.bfloat16()
        half[tag + "_bf16_as_f32"] = t.bfloat16().float()
    half["x_f64"] = x[:4].double() / 3.0
    half["x_f64_as_f32"] = (x[:4].double() / 3.0).float()
    save(os.path.join(d, "torch_half.safetensors"), half)
    print("torch_data=%s" % source)
    print("torch_train_accuracy_seq=%.4f fc=%.4f" % (acc_seq, acc_fc))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--tol", type=float, default=1e-5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ok = True
    if os.path.exists(os.path.join(a.dir, "lualps_mlp.safetensors")):
        ok = reverse_check(a.dir, a.tol)
    export(a.dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

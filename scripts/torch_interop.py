#!/usr/bin/env python3
"""PyTorch side of the safetensors interop check (driven by check_torch_interop.lua).

    torch_interop.py DIR

A checkpoint holds weights, not strides, padding or pooling, so lualps moves
the architecture in the safetensors metadata under "lualps.arch": a JSON list
with one entry per child of the nn.Sequential, optionally preceded by the
input shape (no batch):

    [{"type":"input","shape":[1,28,28]},
     {"type":"conv2d","in":1,"out":8,"kernel":5,"stride":2,"padding":2},
     {"type":"relu"},{"type":"maxpool2d","kernel":2,"stride":2},
     {"type":"flatten"},{"type":"linear","in":392,"out":4}]

From your own code (copy arch_of, sequential_from_arch, save and load):

    arch = json.dumps(arch_of(model, (1, 28, 28)), separators=(",", ":"))
    save("cnn.safetensors", model.state_dict(), {"format": "pt", "lualps.arch": arch})
    state, meta = load("cnn.safetensors")          # e.g. written by lualps
    model = sequential_from_arch(json.loads(meta["lualps.arch"]))
    model.load_state_dict(state)

What this script does:
1. For each of DIR/lualps_mlp.safetensors and DIR/lualps_cnn.safetensors that
   exists (written by lualps' export), rebuild the nn.Sequential from its
   "lualps.arch", load_state_dict it (strict), run it on the inputs in
   DIR/lualps_io.safetensors and compare with the lualps outputs there.
   Prints "reverse_max_abs_diff=<v>" and "reverse_cnn_max_abs_diff=<v>".
2. Train a small MLP and a small CNN on Fashion-MNIST (random data if the
   Debian dataset is absent) and write, for lualps to check:
     torch_seq.safetensors   nn.Sequential naming: 0.weight, 0.bias, 2.weight, ...
                             (no lualps.arch: lualps infers an MLP from shapes)
     torch_fc.safetensors    fc1/fc2/fc3 naming, the last layer without bias
     torch_cnn.safetensors   Conv2d/ReLU/MaxPool2d/Tanh/Flatten/Linear, with
                             lualps.arch including the input shape
     torch_io.safetensors    x, x_img and the models' outputs y_seq, y_fc, y_cnn
     torch_half.safetensors  F16 and BF16 payloads (tensor.half()/.bfloat16()
                             raw bytes) with their exact float32 values, and F64

    torch_interop.py --resnet OUT [--io IOFILE] [--epochs 3] [--images 1600]

writes a small ResNet-style checkpoint as PyTorch users write theirs: an
nn.Sequential of Conv2d (bias=False), BatchNorm2d, ReLU, two residual blocks
(the Residual module below: an identity and a strided 1x1 conv + batch norm
shortcut), Dropout, AdaptiveAvgPool2d(1), Flatten and Linear, trained
(--epochs 3, Adam, on --images 1600 of Fashion-MNIST's test split) on
T-shirt/top vs Trouser (the hetero set's task 1, tested on 400 others),
saved with model.state_dict() (num_batches_tracked included, as I64) and its
arch_of() as "lualps.arch", and metadata id, task and test_accuracy.
IOFILE (optional) gets test images x and the eval-mode logits y.

    torch_interop.py --check-arch FILE...

checks modules lualps wrote (tests/helpers.lua torch_check): each FILE holds
an arch ("lualps.arch"), every parameter and buffer under its state_dict
name, an input x and lualps' results: eval.y (eval mode), train.y and
train.<buffer> (one train-mode forward: batch norm by its batch statistics,
running statistics moved; dropout left in eval mode, its masks being
lualps' own draws), and fit.<name> (every parameter and buffer after plain
SGD on fit.x, fit.y as "lualps.fit" says: lr, batch_size, steps, in order).
The module is rebuilt from the arch (and its arch rebuilt from the module),
loaded with strict=True (num_batches_tracked, which lualps does not keep,
from the module itself) and run the same way. Prints one line per file with
eval=, train=, running=, fit= (max abs differences; -1 where not asked).

Safetensors files are written and read here by hand (struct + json): Debian has
no python3-safetensors. Exit status 1 if a reverse check exceeds --tol.
"""
import argparse
import gzip
import json
import os
import struct
import sys

import torch

# int64: batch norm's num_batches_tracked, as PyTorch's state_dict holds it
DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64"}
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


def _one(v, what):  # lualps layers are square: one size for both axes
    v = (v, v) if isinstance(v, int) else tuple(v)
    if v[0] != v[1]:
        raise ValueError("%s %s: lualps needs the same value for both axes" % (what, v))
    return v[0]


def _bias(m, entry):  # "bias" is written only when false, as lualps writes it
    if m.bias is None:
        entry["bias"] = False
    return entry


def _conv_entry(m):
    if m.groups != 1 or _one(m.dilation, "dilation") != 1 or m.padding_mode != "zeros":
        raise ValueError("lualps' conv2d has no groups, dilation, padding modes")
    if isinstance(m.padding, str):
        raise ValueError("padding %r: lualps' conv2d takes a number" % m.padding)
    return _bias(m, {"type": "conv2d", "in": m.in_channels, "out": m.out_channels,
                     "kernel": _one(m.kernel_size, "kernel_size"), "stride": _one(m.stride, "stride"),
                     "padding": _one(m.padding, "padding")})


def _maxpool_entry(m):
    if _one(m.padding, "padding") != 0 or _one(m.dilation, "dilation") != 1 or m.ceil_mode:
        raise ValueError("lualps' maxpool2d has no padding, dilation, ceil_mode")
    return {"type": "maxpool2d", "kernel": _one(m.kernel_size, "kernel_size"),
            "stride": _one(m.stride, "stride")}


def _avgpool_entry(m):
    if _one(m.padding, "padding") != 0 or m.ceil_mode or m.divisor_override is not None:
        raise ValueError("lualps' avgpool2d has no padding, ceil_mode, divisor_override")
    return {"type": "avgpool2d", "kernel": _one(m.kernel_size, "kernel_size"),
            "stride": _one(m.stride, "stride")}


def _adaptive_entry(m):
    if m.output_size is None or (not isinstance(m.output_size, int) and None in m.output_size):
        raise ValueError("lualps' adaptive_avgpool2d needs an output size for both axes")
    return {"type": "adaptive_avgpool2d", "output": _one(m.output_size, "output_size")}


def _gelu_entry(m):
    if m.approximate != "none":
        raise ValueError("lualps' gelu is the exact one (approximate='none')")
    return {"type": "gelu"}


def _flatten_entry(m):
    if m.start_dim != 1 or m.end_dim != -1:
        raise ValueError("lualps' flatten keeps the batch and flattens the rest")
    return {"type": "flatten"}


def _bn_entry(m):
    if not m.affine or not m.track_running_stats or m.momentum is None:
        raise ValueError("lualps' batch norm has affine=True, track_running_stats=True, a momentum")
    kind = "batchnorm2d" if isinstance(m, torch.nn.BatchNorm2d) else "batchnorm1d"
    return {"type": kind, "features": m.num_features, "eps": m.eps, "momentum": m.momentum}


class Residual(torch.nn.Module):
    """lualps' residual block: body(x) + shortcut(x), each an nn.Sequential
    (an empty shortcut is the identity)."""

    def __init__(self, body, shortcut):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


# One entry per layer type, both ways (csrc/nn/registry.c lists lualps' side):
# TO_ARCH[class](module) -> arch entry; FROM_ARCH[type](entry) -> module.
TO_ARCH = {
    torch.nn.Conv2d: _conv_entry,
    torch.nn.MaxPool2d: _maxpool_entry,
    torch.nn.Linear: lambda m: _bias(m, {"type": "linear", "in": m.in_features, "out": m.out_features}),
    torch.nn.Flatten: _flatten_entry,
    torch.nn.ReLU: lambda m: {"type": "relu"},
    torch.nn.Tanh: lambda m: {"type": "tanh"},
    torch.nn.BatchNorm1d: _bn_entry,
    torch.nn.BatchNorm2d: _bn_entry,
    torch.nn.Dropout: lambda m: {"type": "dropout", "p": float(m.p)},
    Residual: lambda m: {"type": "residual", "body": arch_list(m.body),
                         "shortcut": arch_list(m.shortcut)},
    torch.nn.AvgPool2d: _avgpool_entry,
    torch.nn.AdaptiveAvgPool2d: _adaptive_entry,
    torch.nn.GELU: _gelu_entry,
    torch.nn.Sigmoid: lambda m: {"type": "sigmoid"},
    torch.nn.SiLU: lambda m: {"type": "silu"},
    torch.nn.LeakyReLU: lambda m: {"type": "leaky_relu", "slope": m.negative_slope},
}
FROM_ARCH = {
    "conv2d": lambda e: torch.nn.Conv2d(e["in"], e["out"], e["kernel"], stride=e.get("stride", 1),
                                        padding=e.get("padding", 0), bias=e.get("bias", True)),
    "maxpool2d": lambda e: torch.nn.MaxPool2d(e["kernel"], stride=e.get("stride", e["kernel"])),
    "linear": lambda e: torch.nn.Linear(e["in"], e["out"], bias=e.get("bias", True)),
    "flatten": lambda e: torch.nn.Flatten(),
    "relu": lambda e: torch.nn.ReLU(),
    "tanh": lambda e: torch.nn.Tanh(),
    "batchnorm1d": lambda e: torch.nn.BatchNorm1d(e["features"], eps=e.get("eps", 1e-5),
                                                  momentum=e.get("momentum", 0.1)),
    "batchnorm2d": lambda e: torch.nn.BatchNorm2d(e["features"], eps=e.get("eps", 1e-5),
                                                  momentum=e.get("momentum", 0.1)),
    "dropout": lambda e: torch.nn.Dropout(float(e.get("p", 0.5))),
    "residual": lambda e: Residual(sequential_from_arch(e["body"]),
                                   sequential_from_arch(e.get("shortcut", []))),
    "avgpool2d": lambda e: torch.nn.AvgPool2d(e["kernel"], stride=e.get("stride", e["kernel"])),
    "adaptive_avgpool2d": lambda e: torch.nn.AdaptiveAvgPool2d(e["output"]),
    "gelu": lambda e: torch.nn.GELU(),
    "sigmoid": lambda e: torch.nn.Sigmoid(),
    "silu": lambda e: torch.nn.SiLU(),
    "leaky_relu": lambda e: torch.nn.LeakyReLU(e.get("slope", 0.01)),
}


def arch_list(modules):
    """The arch entries of a sequence of modules (an nn.Sequential's children)."""
    out = []
    for i, m in enumerate(modules):
        f = TO_ARCH.get(type(m))
        if f is None:
            raise ValueError("layer %d: lualps has no %r" % (i, m))
        try:
            out.append(f(m))
        except ValueError as err:
            raise ValueError("layer %d: %s" % (i, err)) from None
    return out


def arch_of(model, input_shape=None):
    """The "lualps.arch" list of an nn.Sequential of the layers in TO_ARCH;
    input_shape (no batch) is optional."""
    arch = [{"type": "input", "shape": list(input_shape)}] if input_shape else []
    return arch + arch_list(model)


def modules_of(arch):
    """The modules an arch list describes (the input entry, if any, is not a layer)."""
    out = []
    for e in arch:
        t = e["type"]
        if t == "input":
            continue
        if t not in FROM_ARCH:
            raise ValueError("unknown layer type %r" % t)
        out.append(FROM_ARCH[t](e))
    return out


def sequential_from_arch(arch):
    """The nn.Sequential an arch list describes (child i-1 = layer i; the
    input entry, if any, is not a layer). Defaults as lualps fills them."""
    return torch.nn.Sequential(*modules_of(arch))


def reverse_check(d, name, x_key, y_key, tol):
    state, meta = load(os.path.join(d, name))
    io, _ = load(os.path.join(d, "lualps_io.safetensors"))
    assert meta.get("format") == "pt", meta
    arch = json.loads(meta["lualps.arch"])
    model = sequential_from_arch(arch).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        y = model(io[x_key])
    diff = (y - io[y_key]).abs().max().item()
    print("reverse_arch(%s)=%s" % (name, " ".join(e["type"] for e in arch)))
    return diff, diff <= tol


def _max_diff(pairs):
    return max([(a - b).abs().max().item() if a.numel() else 0.0 for a, b in pairs] or [0.0])


def _train_mode(model):
    """Train mode with every dropout in eval mode (lualps draws its own masks)."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()


def check_arch(path):
    """The differences between lualps' results in path and PyTorch's."""
    t, meta = load(path)
    arch = json.loads(meta["lualps.arch"])
    model = sequential_from_arch(arch)
    layers = [e for e in arch if e["type"] != "input"]
    if arch_of(model) != layers:
        raise ValueError("%s: arch_of(module) %s differs from the arch %s" % (path, arch_of(model), layers))
    prefixes = ("eval.", "train.", "fit.")
    state = {k: v for k, v in t.items() if k != "x" and not k.startswith(prefixes)}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = v
    model.load_state_dict(state, strict=True)
    buffers = [k for k, _ in model.named_buffers() if not k.endswith("num_batches_tracked")]
    r = {"eval": -1.0, "train": -1.0, "running": -1.0, "fit": -1.0}
    with torch.no_grad():
        model.eval()
        r["eval"] = _max_diff([(model(t["x"]), t["eval.y"])])
        if "train.y" in t:
            _train_mode(model)
            r["train"] = _max_diff([(model(t["x"]), t["train.y"])])
            r["running"] = _max_diff([(dict(model.named_buffers())[k], t["train." + k]) for k in buffers])
    if "lualps.fit" in meta:
        fit = json.loads(meta["lualps.fit"])
        model.load_state_dict(state, strict=True)
        _train_mode(model)
        opt = torch.optim.SGD(model.parameters(), lr=fit["lr"])
        x, y, bs = t["fit.x"], t["fit.y"].long(), fit["batch_size"]
        for k in range(fit["steps"]):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[k * bs:(k + 1) * bs]), y[k * bs:(k + 1) * bs]).backward()
            opt.step()
        now = dict(model.state_dict())
        r["fit"] = _max_diff([(now[k].detach(), t["fit." + k]) for k in state if "fit." + k in t])
    return r


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
    nn = torch.nn
    # 28 -conv5,pad2-> 28 -pool2-> 14 -conv3,stride2-> 6 -pool3,stride1-> 4: 12*4*4 = 192
    cnn = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 12, 3, stride=2), nn.Tanh(), nn.MaxPool2d(3, stride=1),
                        nn.Flatten(), nn.Linear(192, 10))

    def img(t):
        return t.reshape(-1, 1, 28, 28)

    acc_seq, acc_fc = train(seq, x_train, y_train), train(fc, x_train, y_train)
    acc_cnn = train(cnn, img(x_train), y_train, epochs=1)
    seq.eval()
    fc.eval()
    cnn.eval()
    with torch.no_grad():
        y_seq, y_fc, y_cnn = seq(x), fc(x), cnn(img(x))
    meta = {"format": "pt", "source": "scripts/torch_interop.py", "data": source}
    save(os.path.join(d, "torch_seq.safetensors"), seq.state_dict(), meta)
    save(os.path.join(d, "torch_fc.safetensors"), fc.state_dict(), meta)
    arch = json.dumps(arch_of(cnn, (1, 28, 28)), separators=(",", ":"))
    save(os.path.join(d, "torch_cnn.safetensors"), cnn.state_dict(), dict(meta, **{"lualps.arch": arch}))
    save(os.path.join(d, "torch_io.safetensors"), {"x": x, "x_img": img(x).contiguous(),
                                                   "y_seq": y_seq, "y_fc": y_fc, "y_cnn": y_cnn})
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
    print("torch_train_accuracy_seq=%.4f fc=%.4f cnn=%.4f" % (acc_seq, acc_fc, acc_cnn))


def resnet_example(classes=2):
    """The --resnet model: how a PyTorch user writes a small ResNet."""
    nn = torch.nn

    def block(cin, cout, stride):
        body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        shortcut = nn.Sequential()  # the identity
        if stride != 1 or cin != cout:
            shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        return Residual(body, shortcut)

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         block(16, 16, 1), nn.ReLU(), block(16, 32, 2), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))


def write_resnet(out, io_path=None, epochs=3, images=1600):
    torch.manual_seed(0)
    x_all, y_all, source = data(10000)  # t10k's 2000 of the two classes: 1600 to train, 400 to test
    keep = (y_all == 0) | (y_all == 1)  # T-shirt/top, Trouser
    x_all, y_all = x_all[keep].reshape(-1, 1, 28, 28), y_all[keep]
    n = (x_all.shape[0] * 4) // 5
    model = resnet_example()
    train(model, x_all[:min(n, images)], y_all[:min(n, images)], epochs=epochs)
    model.eval()
    with torch.no_grad():
        acc = (model(x_all[n:]).argmax(1) == y_all[n:]).float().mean().item()
    arch = json.dumps(arch_of(model, (1, 28, 28)), separators=(",", ":"))
    meta = {"format": "pt", "lualps.arch": arch, "id": "torch-resnet", "task": "1",
            "test_accuracy": "%.4f" % acc, "source": "scripts/torch_interop.py --resnet (%s)" % source}
    save(out, model.state_dict(), meta)
    if io_path:
        x = x_all[n:n + 16].contiguous()
        with torch.no_grad():
            save(io_path, {"x": x, "y": model(x)})
    print("%s: %s, test accuracy %.4f" % (out, " ".join(e["type"] for e in json.loads(arch)[1:]), acc))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--check-arch", nargs="+", metavar="FILE")
    ap.add_argument("--resnet", metavar="OUT")
    ap.add_argument("--io", metavar="IOFILE")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, default=1600)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.resnet:
        write_resnet(a.resnet, a.io, a.epochs, a.images)
        return 0
    if a.check_arch:
        ok = True
        for path in a.check_arch:
            r = check_arch(path)
            print("check_arch %s %s" % (path, " ".join("%s=%.9g" % kv for kv in r.items())))
            ok = ok and max(r.values()) <= a.tol
        return 0 if ok else 1
    if not a.dir:
        ap.error("DIR or --check-arch FILE is required")
    ok = True
    for name, x_key, y_key, tag in (("lualps_mlp.safetensors", "x", "y", "reverse"),
                                    ("lualps_cnn.safetensors", "x_img", "y_cnn", "reverse_cnn")):
        if os.path.exists(os.path.join(a.dir, name)):
            diff, good = reverse_check(a.dir, name, x_key, y_key, a.tol)
            print("%s_max_abs_diff=%.9g" % (tag, diff))
            ok = ok and good
    export(a.dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""PyTorch side of scripts/bench_hetero.lua: the class templates of LPS for
CNNs written by lualps (DIR/cnn_*.safetensors, architecture in "lualps.arch")
over the same noise images (DIR/noise.safetensors: R*P x 784, range-major).
Per model and class c: the input gradient of (logit_c - mean logit), averaged
over the P images of each range, 2x2 average pooled, the class's row
(R ranges x 196) L2-normalized. Files are read and modules built before the
clock starts; the timed part is the templates alone. Two ways of getting k
input gradients are tried and the faster kept: "batched" (the noise batch
repeated k times, one backward, as lualps does) and "loop" (one forward, k
backwards). Checks against DIR/lualps_templates.safetensors; prints one JSON
line. Usable alone: bench_hetero_torch.py --dir D --intra 1 --blas 1."""
import argparse, ctypes, glob, json, os, statistics, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_interop import load, sequential_from_arch  # noqa: E402


def pooled(g, k, ranges):
    """k*R x 784 averaged gradients -> k x (R*196) unit rows."""
    t = F.avg_pool2d(g.reshape(k * ranges, 1, 28, 28), 2).reshape(k, -1)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def batched(model, x, k, ranges):
    n = x.shape[0]
    xs = x.repeat(k, 1, 1, 1).requires_grad_()
    gy = torch.full((k * n, k), -1.0 / k)
    for c in range(k):
        gy[c * n:(c + 1) * n, c] += 1.0
    (g,) = torch.autograd.grad(model(xs), xs, gy)
    return pooled(g.reshape(k * ranges, n // ranges, 784).mean(1), k, ranges)


def loop(model, x, k, ranges):
    n = x.shape[0]
    x = x.clone().requires_grad_()
    out = model(x)
    centred = out - out.mean(1, keepdim=True)
    gs = [torch.autograd.grad(centred[:, c].sum(), x, retain_graph=c < k - 1)[0] for c in range(k)]
    return pooled(torch.stack(gs).reshape(k * ranges, n // ranges, 784).mean(1), k, ranges)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--intra", type=int, default=1, help="torch intra-op (OpenMP) threads")
    ap.add_argument("--blas", type=int, default=1, help="OpenBLAS threads")
    ap.add_argument("--ranges", type=int, default=2, help="noise ranges R")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.intra)
    torch.set_num_interop_threads(1)
    openblas = ctypes.CDLL("libopenblas.so.0")  # what torch's libblas.so.3 resolves to
    openblas.openblas_set_num_threads(a.blas)
    x = load(os.path.join(a.dir, "noise.safetensors"))[0]["noise"].reshape(-1, 1, 28, 28)
    ref = load(os.path.join(a.dir, "lualps_templates.safetensors"))[0]
    models = []
    for path in sorted(glob.glob(os.path.join(a.dir, "cnn_*.safetensors"))):
        state, meta = load(path)
        m = sequential_from_arch(json.loads(meta["lualps.arch"])).eval()
        m.load_state_dict(state, strict=True)
        m.requires_grad_(False)  # input gradients only
        name = os.path.basename(path)[4:-len(".safetensors")]
        models.append((name, m, m[-1].out_features))
    best = None
    for way in (batched, loop):
        way(models[0][1], x, models[0][2], a.ranges)  # warm-up
        runs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = [way(m, x, k, a.ranges) for _, m, k in models]
            runs.append(len(models) / (time.perf_counter() - t0))
        if best is None or statistics.median(runs) > best[1]:
            best = (way.__name__, statistics.median(runs), runs, out)
    # lualps's rows go on with the template extras (class count, logits): compare the templates
    diff = max((t - ref[name][:, :t.shape[1]]).abs().max().item() for (name, _, _), t in zip(models, best[3]))
    print(json.dumps({"side": "torch", "models": len(models), "way": best[0], "median": best[1],
                      "models_per_second": best[2], "max_abs_diff": diff, "intra": torch.get_num_threads(),
                      "blas": openblas.openblas_get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    sys.exit(main())

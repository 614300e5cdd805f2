#!/usr/bin/python3
"""The reference LogME (thuml/LogME, LogME.py: LogME._fit_fixed_point with
its truncated_svd) and LEEP (LEEP.py), transcribed to plain numpy (no
numba), as the peer of lualps's C estimators in tests/test_estimators.lua
and scripts/bench_estimators.lua.

  logme_reference.py check < CASES.json
      CASES: {"cases": [{"f": [[...], ...], "y": [...], "theta": [[...]]?}]},
      labels 0-based, values float32 (rounded to float32 here, then float64
      as LogME.fit does). Prints {"logme": [...], "evidence": [[...]],
      "kept": [...], "leep": [...]} (kept: singular values the reference
      keeps; leep null without theta).
  logme_reference.py bench FEATURES.f32 LABELS.txt N D M REPEATS
      M candidates of N x D little-endian float32 features, one set of N
      0-based labels; prints {"ms": [median ms of each candidate],
      "scores": [...]}: the time of LogME.fit alone (features already float64).
"""
import json
import sys
import time

import numpy as np


def truncated_svd(x):
    u, s, vh = np.linalg.svd(x.transpose() @ x)
    s = np.sqrt(s)
    u_times_sigma = x @ vh.transpose()
    k = np.sum((s > 1e-10) * 1)  # rank of f
    s = s.reshape(-1, 1)
    s = s[:k]
    vh = vh[:k]
    u = u_times_sigma[:, :k] / s.reshape(1, -1)
    return u, s, vh


def logme(f, y):
    """LogME._fit_fixed_point for classification: (score, per-class
    evidence, singular values kept)."""
    f = f.astype(np.float64)
    n, d = f.shape
    if n > d:
        u, s, vh = truncated_svd(f)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
    s = s.reshape(-1, 1)
    sigma = s ** 2
    evidences = []
    for i in range(int(y.max() + 1)):
        y_ = (y == i).astype(np.float64).reshape(-1, 1)
        x = u.T @ y_
        x2 = x ** 2
        res_x2 = (y_ ** 2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            t_ = alpha / beta
            if abs(t_ - t) / t <= 1e-3:
                break
        evidence = d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) \
            - 0.5 * np.sum(np.log(alpha + beta * sigma)) - beta / 2.0 * res2 \
            - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi)
        evidences.append(evidence / n)
    return float(np.mean(evidences)), [float(e) for e in evidences], int(sigma.shape[0])


def leep(theta, y):
    n, _ = theta.shape
    ct = int(np.max(y) + 1)
    joint = np.zeros((ct, theta.shape[1]))
    for i in range(ct):
        joint[i] = np.sum(theta[y == i] / float(n), axis=0)
    p_target_given_source = (joint / joint.sum(axis=0, keepdims=True)).T
    pred = theta @ p_target_given_source
    return float(np.mean(np.log([p[label] for p, label in zip(pred, y)])))


def as64(rows):
    return np.array(rows, dtype=np.float32).astype(np.float64)


def check():
    cases = json.load(sys.stdin)["cases"]
    out = {"logme": [], "evidence": [], "kept": [], "leep": []}
    for c in cases:
        y = np.array(c["y"], dtype=np.int64)
        score, ev, kept = logme(as64(c["f"]), y)
        out["logme"].append(score)
        out["evidence"].append(ev)
        out["kept"].append(kept)
        out["leep"].append(leep(as64(c["theta"]), y) if "theta" in c else None)
    print(json.dumps(out))


def bench(path, labels, n, d, m, repeats):
    feats = np.fromfile(path, dtype="<f4").astype(np.float64).reshape(m, n, d)
    y = np.array([int(v) for v in open(labels).read().split()], dtype=np.int64)
    ms, scores = [], []
    for f in feats:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            score = logme(f, y)[0]
            times.append((time.perf_counter() - t0) * 1e3)
        ms.append(float(np.median(times)))
        scores.append(score)
    print(json.dumps({"ms": ms, "scores": scores}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["check"]:
        check()
    elif sys.argv[1:2] == ["bench"] and len(sys.argv) == 8:
        a = sys.argv[2:]
        bench(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]))
    else:
        sys.exit(__doc__)

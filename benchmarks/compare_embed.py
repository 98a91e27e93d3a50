"""LPS embedding throughput of two source trees, side by side in one process.

    git worktree add /tmp/old <commit>
    python benchmarks/compare_embed.py /tmp/old/src src --n 4000 --threads 1

Both trees embed the same random MLPs with an untrained default LPS network of the same seed
(untrained weights cost the same as trained ones), alternating runs so machine load hits both
alike; it prints the best of `--repeats` per tree, their ratio, and the largest difference
between the two trees' embeddings (a speed change must not change the result).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _load(src: str):
    """`paramsim.lps` imported from `src`, leaving no paramsim module behind for the next."""
    for name in [k for k in sys.modules if k == "paramsim" or k.startswith("paramsim.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(src).resolve()))
    try:
        import paramsim.lps as lps
        from paramsim.weights import Layer, Network
    finally:
        sys.path.pop(0)
    return lps, Layer, Network


def _mlps(Layer, Network, n: int, widths=(64, 32, 32, 2), seed: int = 0):
    """Random ReLU MLPs built with one tree's classes (the same draws for both trees)."""
    g = torch.Generator().manual_seed(seed)
    nets = []
    for _ in range(n):
        layers = []
        for i in range(1, len(widths)):
            w = torch.randn(widths[i], widths[i - 1], generator=g) / widths[i - 1] ** 0.5
            post = ("relu",) if i < len(widths) - 1 else ()
            layers.append(Layer("linear", w, torch.randn(widths[i], generator=g), post=post))
        nets.append(Network(tuple(layers), (1, 8, 8), ("flatten",)))
    return nets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old_src")
    ap.add_argument("new_src")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    trees = {}
    for label, src in (("old", a.old_src), ("new", a.new_src)):
        lps, Layer, Network = _load(src)
        net = lps.LPSNet(lps.LPSConfig(input_shape=(1, 8, 8)), seed=0).eval()
        trees[label] = (net, _mlps(Layer, Network, a.n), [])
    (old_net, old_nets, _), (new_net, new_nets, _) = trees["old"], trees["new"]
    diff = np.abs(old_net.embed(old_nets[:256]) - new_net.embed(new_nets[:256]))
    for _ in range(a.repeats):
        for net, nets, times in trees.values():
            t0 = time.perf_counter()
            net.embed(nets)
            times.append(time.perf_counter() - t0)
    rate = {k: a.n / min(t) for k, (_, _, t) in trees.items()}
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"embed {a.n} MLPs 64-32-32-2, {a.threads} thread(s): old {rate['old']:.0f} models/s, "
        f"new {rate['new']:.0f} models/s, ratio {rate['new'] / rate['old']:.2f}x; "
        f"largest embedding difference {diff.max():.1e}; load {load}"
    )


if __name__ == "__main__":
    main()

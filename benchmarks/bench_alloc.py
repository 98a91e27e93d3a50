"""PyTorch's CPU allocator with and without 2 MB pages for large tensors, side by side.

    python benchmarks/bench_alloc.py [--repeats 2] [--threads 1]

Without `THP_MEM_ALLOC_ENABLE=1`, every large tensor PyTorch allocates on the CPU comes back
as fresh 4 KB pages, and on this machine faulting them in costs more than the arithmetic of
the small CNNs paramsim reads (a ReLU over 205 MB took 0.30 s, of which 0.25 s was the page
faults). `import paramsim` sets the variable unless the user set it. The setting is read
once per process, at the first large allocation, so each workload runs in a child process,
alternating the two settings, `--repeats` times each; it prints the best time of each and
their ratio, and the child's peak RSS. Workloads, on random networks (no data files):

* `probes`: the LPS function branch's forward and backward pass, 256 CNNs of the
  `fashion-pairs-cnn` recipe on 32 probe images of 28 x 28 (nearly all of a CNN fit's time);
* `train`: 30 steps of one 33-model shard of `fashion-pairs-cnn` in the vectorised trainer;
* `embed`: the default LPS embedding of 4,000 MLPs 64-32-32-2 (no large tensors: a check
  that the setting costs nothing where it cannot help).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

WORKLOADS = ("probes", "train", "embed")
VARIABLE = "THP_MEM_ALLOC_ENABLE"


def _cnn_plans(n: int):
    from paramsim.zoo import RECIPES

    _, plans = RECIPES["fashion-pairs-cnn"].plan(10, (1, 28, 28), seed=0)
    return plans[:n]


def run_probes() -> float:
    import torch

    from paramsim.weights import from_module
    from paramsim.weights.network import NetworkStack

    torch.manual_seed(0)
    nets = [
        from_module(p.arch.build(), input_shape=p.arch.input_shape) for p in _cnn_plans(1)
    ] * 256
    stack = NetworkStack.from_networks(nets)
    probes = torch.rand(32, 1, 28, 28, requires_grad=True)

    def step() -> None:
        stack.forward(probes).square().sum().backward()

    step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    return (time.perf_counter() - start) / 3


def run_train() -> float:
    import torch

    from paramsim.data import Dataset
    from paramsim.zoo import train_stacked
    from paramsim.zoo.trainer import TaskData

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat_interleave(300)
    ds = Dataset(
        "synthetic",
        torch.rand((len(y), 1, 28, 28), generator=gen),
        y,
        torch.rand((100, 1, 28, 28), generator=gen),
        torch.arange(10).repeat(10),
        10,
    )
    shard = [replace(p, steps=30) for p in _cnn_plans(33)]
    data = TaskData.build(ds, {p.task_id: p.task for p in shard})
    train_stacked([replace(p, steps=2) for p in shard], data, torch.device("cpu"))
    start = time.perf_counter()
    train_stacked(shard, data, torch.device("cpu"))
    return time.perf_counter() - start


def run_embed() -> float:
    import torch

    from paramsim.lps import LPS, LPSConfig
    from paramsim.lps.model import LPSNet
    from paramsim.weights import from_module
    from paramsim.weights.arch import ArchSpec

    torch.manual_seed(0)
    spec = ArchSpec(kind="mlp", input_shape=(1, 8, 8), hidden=(32, 32), n_outputs=2)
    nets = [from_module(spec.build()) for _ in range(4000)]
    config = LPSConfig(input_shape=(1, 8, 8), n_outputs=2)
    lps = LPS(config=config, net=LPSNet(config).eval())
    lps.embed(nets[:256])
    start = time.perf_counter()
    lps.embed(nets)
    return time.perf_counter() - start


def child(workload: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    seconds = {"probes": run_probes, "train": run_train, "embed": run_embed}[workload]()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.threads)
        return
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {a.threads} thread(s)")
    src = str(Path(__file__).resolve().parents[1] / "src")
    for workload in a.workloads.split(","):
        got: dict[str, list[dict]] = {"0": [], "1": []}
        for _ in range(a.repeats):
            for setting in ("0", "1"):
                env = {**os.environ, VARIABLE: setting}
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
                out = subprocess.run(
                    [sys.executable, __file__, "--child", workload, "--threads", str(a.threads)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                got[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
        off = min(r["seconds"] for r in got["0"])
        on = min(r["seconds"] for r in got["1"])
        rss = {s: max(r["rss_mb"] for r in rows) for s, rows in got.items()}
        print(
            f"{workload:7s} 4 KB pages {off:7.3f} s   2 MB pages {on:7.3f} s   "
            f"speed-up {off / on:4.2f}x   peak RSS {rss['0']:,.0f} / {rss['1']:,.0f} MB"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""How long `paramsim reproduce` takes when every stage is already cached.

    python benchmarks/bench_reproduce.py [--out /tmp/repro-bench] [--threads 2]

Runs the quick configuration (`ReproduceConfig.quick()`, six digit-pair tasks) into --out
once to fill the cache (building its zoo there), then again, and prints both wall times
and the stages the second run reused. Every number comes from this run. (The test suite
only checks that the second run reuses every stage; it asserts no times.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    from paramsim.use.reproduce import ReproduceConfig, reproduce

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/repro-bench"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    times = []
    reused = []
    for _ in range(2):
        lines: list[str] = []
        t0 = time.perf_counter()
        reproduce(a.out, None, ReproduceConfig.quick(), lines.append)
        times.append(time.perf_counter() - t0)
        reused = [m for m in lines if "reusing" in m]
    print(f"reproduce, quick configuration, into {a.out}, {a.threads} thread(s):")
    print(f"  first run (fills the cache, or reuses an earlier one): {times[0]:.1f} s")
    print(f"  cached rerun: {times[1]:.2f} s, {len(reused)} stages reused")


if __name__ == "__main__":
    main()

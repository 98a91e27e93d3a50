"""Time and memory of a transfer evaluation: where the minutes and the gigabytes go.

    python benchmarks/bench_transfer.py ZOO [--methods chain,gram1,logme,knn]
        [--shots 1,5] [--repeats 2] [--memory-budget 512] [--targets 0-1,2-3] [--threads 2]

Runs `evaluate_transfer` in this process, sampling the resident set size every 0.1 s, and
prints peak RSS (the kernel's high-water mark and the sampled one), wall time, the time of
each stage (probes, fine-tuning every candidate on every draw, each rule, the cost timing)
and the fine-tunes per second. The one-line summary at the end is what docs/BENCHMARKS.md
quotes, with the command and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

import torch


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler(threading.Thread):
    """The largest resident set size seen, sampled in the background."""

    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        self.every, self.peak, self.stop = every, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.every)


def main() -> None:
    from paramsim.data import Task
    from paramsim.use._common import load_similarity
    from paramsim.use.transfer import (
        TransferConfig,
        evaluate_transfer,
        format_cost_table,
        format_transfer_table,
    )
    from paramsim.use.transfer.rules import split_rules
    from paramsim.zoo import Zoo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("zoo")
    ap.add_argument("--methods", default="chain,gram1,logme,knn")
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-budget", type=int, default=512)
    ap.add_argument("--targets", default=None)
    ap.add_argument("--sources-per-task", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-costs", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the result tables too")
    ap.add_argument("--out", default=None, help="also write transfer.json and the plot here")
    ap.add_argument(
        "--data-dir",
        default=None,
        help="IDX files of the zoo's dataset (for a zoo whose dataset this tree cannot name)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    zoo = Zoo.open(args.zoo)
    if args.data_dir:
        from paramsim.data.datasets import load_idx

        data = load_idx(args.data_dir, name=zoo.meta["dataset"])
        zoo.dataset = lambda data_dir=None: data
    sim_names, selectors = split_rules(args.methods)
    sims = {n: load_similarity(method=n) for n in sim_names}
    targets = tuple(Task.parse(t).name for t in args.targets.split(",")) if args.targets else None
    cfg = TransferConfig(
        shots=tuple(int(k) for k in args.shots.split(",")),
        repeats=args.repeats,
        targets=targets,
        memory_budget_mb=args.memory_budget,
        sources_per_task=args.sources_per_task,
        costs=not args.no_costs,
    )
    stamps = [(0.0, "start")]

    def say(msg: str) -> None:
        stamps.append((time.perf_counter() - t0, msg))
        print(f"[{stamps[-1][0]:7.1f}s, RSS {rss_mb():6.0f} MB] {msg}", flush=True)

    res = evaluate_transfer(zoo, sims, cfg, progress=say, selectors=selectors)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024
    cpu = usage.ru_utime + usage.ru_stime
    pairs = res["n_candidate_pairs"]
    if args.out:
        from paramsim.use.transfer import write_transfer

        write_transfer(res, args.out)
    if args.table:
        print(format_transfer_table(res))
        print(format_cost_table(res))
    print(
        f"zoo {args.zoo} ({res['n_models']} models), methods {args.methods}, K {args.shots}, "
        f"{args.repeats} draws per task, {len(res['instances'])} in all, "
        f"{args.sources_per_task or 'all'} sources per task; budget "
        f"{args.memory_budget} MB, {args.threads} threads; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"wall {wall:.1f} s (CPU {cpu:.1f} s), fine-tuning {res['finetune_seconds']:.1f} s "
        f"({pairs} fine-tunes, {pairs / res['finetune_seconds']:.0f}/s); "
        f"peak RSS {peak:.0f} MB (sampled {sampler.peak:.0f} MB)"
    )
    for name, m in res["methods"].items():
        print(f"  {name}: {m['seconds']:.1f} s")


if __name__ == "__main__":
    main()

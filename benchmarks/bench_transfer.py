"""Time and memory of a transfer evaluation: where the minutes and the gigabytes go.

    python benchmarks/bench_transfer.py ZOO [--methods chain,gram1,logme,knn]
        [--shots 1,5] [--repeats 2] [--memory-budget 512] [--targets 0-1,2-3] [--threads 2]
        [--budgets 512,2048] [--compare-src DIR]

Runs `evaluate_transfer` in this process, sampling the resident set size every 0.1 s, and
prints peak RSS (the kernel's high-water mark and the sampled one), wall time, the time of
each stage (probes, fine-tuning every candidate on every draw, each rule, the cost timing)
and the fine-tunes per second. The one-line summary at the end is what docs/BENCHMARKS.md
quotes, with the command and the machine's load average.

Side by side: `--budgets A,B` runs the same settings once per memory budget, and
`--compare-src DIR` once more (at the first budget) with the paramsim source tree in DIR,
e.g. an earlier commit (`git archive COMMIT src | tar -x -C /tmp/old`, then
`--compare-src /tmp/old/src`). Each run is a fresh process, one after another, so each
peak RSS is its own; a table of wall time, peak RSS, per-rule seconds and each rule's
chosen accuracy (equal numbers: equal selections) follows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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
    ap.add_argument(
        "--sources-per-task",
        type=int,
        default=TransferConfig().sources_per_task,
        help="candidates per other task, as `paramsim transfer` (0: all)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-costs", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the result tables too")
    ap.add_argument("--out", default=None, help="also write transfer.json and the plot here")
    ap.add_argument("--budgets", default=None, help="comma list of MB: one run per budget")
    ap.add_argument("--compare-src", default=None, help="also run with this source tree")
    ap.add_argument("--result-json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument(
        "--data-dir",
        default=None,
        help="IDX files of the zoo's dataset (for a zoo whose dataset this tree cannot name)",
    )
    args = ap.parse_args()
    if args.budgets or args.compare_src:
        side_by_side(args)
        return
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
    if args.result_json:
        chosen = {
            name: {k: v["chosen"]["mean"] for k, v in m["shots"].items()}
            for name, m in res["methods"].items()
        }
        seconds = {name: m["seconds"] for name, m in res["methods"].items()}
        summary = {"wall": wall, "cpu": cpu, "peak_mb": peak, "sampled_mb": sampler.peak}
        summary |= {"finetune": res["finetune_seconds"], "seconds": seconds, "chosen": chosen}
        print("RESULT " + json.dumps(summary), flush=True)


def side_by_side(args) -> None:
    """Each setting in a fresh process (its own peak RSS), then one table."""
    budgets = [int(b) for b in (args.budgets or str(args.memory_budget)).split(",")]
    runs = [("this tree", b, None) for b in budgets]
    if args.compare_src:
        runs.append((args.compare_src, budgets[0], os.path.abspath(args.compare_src)))
    # the resolved candidate count goes to every run: an older tree's default may differ
    skip = {"--budgets", "--compare-src", "--memory-budget", "--sources-per-task"}
    argv, i = [], 1
    while i < len(sys.argv):  # the same settings, less the side-by-side ones
        a = sys.argv[i]
        if a.split("=")[0] in skip:
            i += 1 if "=" in a else 2
            continue
        argv.append(a)
        i += 1
    rows = []
    for label, budget, src in runs:
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = src
        cmd = [sys.executable, __file__, *argv, "--memory-budget", str(budget)]
        cmd += ["--sources-per-task", str(args.sources_per_task), "--result-json"]
        print(f"== {label}, budget {budget} MB: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = proc.stdout.splitlines()
        print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
        if proc.returncode:
            print(proc.stderr[-3000:], flush=True)
            raise SystemExit(f"run {label} at {budget} MB failed")
        rows.append((label, budget, json.loads(lines[-1].removeprefix("RESULT "))))
    print(f"\nside by side ({args.threads} threads; load average {os.getloadavg()[0]:.1f}):")
    for label, budget, r in rows:
        rules = ", ".join(f"{n} {s:.1f} s" for n, s in r["seconds"].items())
        chosen = "; ".join(
            f"{n} " + " ".join(f"K{k} {v:.4f}" for k, v in per_k.items())
            for n, per_k in r["chosen"].items()
        )
        print(
            f"  {label} @ {budget} MB: wall {r['wall']:.1f} s (CPU {r['cpu']:.1f} s), "
            f"peak RSS {r['peak_mb']:.0f} MB (sampled {r['sampled_mb']:.0f}), fine-tuning "
            f"{r['finetune']:.1f} s, {rules}\n    chosen accuracy: {chosen}"
        )


if __name__ == "__main__":
    main()

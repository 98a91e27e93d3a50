"""Vectorised zoo training against a per-model loop, measured side by side.

    python benchmarks/bench_zoo.py [--models 45] [--cnn-models 22] [--threads 1,2]

For each recipe the same plans are trained once with `train_one` (one nn.Module and one
torch.optim optimiser per model) and once with `train_stacked`, shard by shard as
`paramsim zoo build` does (without retrains or disk writes); it prints the speed ratio,
the training FLOP/s achieved and that as a fraction of a large matmul's FLOP/s measured in
the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from paramsim.data import load_digits
from paramsim.zoo import RECIPES, train_one, train_stacked
from paramsim.zoo.build import plan_shards
from paramsim.zoo.trainer import ModelPlan, TaskData


def matmul_flops(seconds: float = 2.0, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


def training_flops(plan: ModelPlan) -> float:
    """Multiply-adds of forward + backward (3x forward), counted as 2 FLOPs each."""
    arch, b = plan.arch, plan.batch_size
    if arch.kind == "mlp":
        widths = arch.widths
        fwd = sum(widths[i] * widths[i + 1] for i in range(len(widths) - 1)) * b
    else:
        c, h, w = arch.input_shape
        fwd, prev = 0, c
        for i, ch in enumerate(arch.hidden):
            fwd += prev * ch * 9 * h * w * b
            if i in arch.pool_after:
                h, w = h // 2, w // 2
            prev = ch
        fwd += prev * arch.n_outputs * b
    return 2 * 3 * fwd * plan.steps


def bench(name: str, n_models: int, threads: int, peak: float) -> None:
    ds = load_digits()
    recipe = RECIPES[name]
    _, plans = recipe.plan(ds.n_classes, ds.input_shape, seed=0)
    if n_models < 1:
        return
    # spread the sample over all tasks; train them as `zoo build` groups them into shards
    plans = plans[:: max(1, len(plans) // n_models)][:n_models]
    data = TaskData.build(ds, {p.task_id: p.task for p in plans})
    start = time.perf_counter()
    for p in plans:
        train_one(p, ds)
    loop = time.perf_counter() - start
    start = time.perf_counter()
    for shard in plan_shards(plans, recipe.shard_size):
        train_stacked(shard.plans, data)
    stacked = time.perf_counter() - start
    flops = sum(training_flops(p) for p in plans)
    print(
        f"{name:18s} threads={threads} models={n_models:4d}  loop {loop:7.2f} s  "
        f"vectorised {stacked:6.2f} s  speed-up {loop / stacked:5.1f}x  "
        f"{flops / stacked / 1e9:6.2f} GFLOP/s = {flops / stacked / peak:6.1%} of matmul peak"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=45)
    parser.add_argument("--cnn-models", type=int, default=22)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        peak = matmul_flops()
        print(f"threads={threads}: large matmul {peak / 1e9:.1f} GFLOP/s")
        bench("digits-pairs", args.models, threads, peak)
        bench("digits-pairs-cnn", args.cnn_models, threads, peak)


if __name__ == "__main__":
    main()

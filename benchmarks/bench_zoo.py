"""Vectorised zoo training against a per-model loop, and one shard's throughput on a device.

    python benchmarks/bench_zoo.py [--models 45] [--cnn-models 22] [--threads 1,2]

For each recipe the same plans are trained once with `train_one` (one nn.Module and one
torch.optim optimiser per model) and once with `train_stacked`, shard by shard as
`paramsim zoo build` does (without retrains or disk writes); it prints the speed ratio,
the training FLOP/s achieved and that as a fraction of a large matmul's FLOP/s measured in
the same run.

    python benchmarks/bench_zoo.py --recipe cifar100-modelset500 --synthetic --device cuda \
        [--shard-size 50] [--steps 50] [--precision bf16] [--channels-last]

With --recipe, one shard of the recipe's models (its first `--shard-size` plans) trains for
`--steps` steps after a short warm-up, on random inputs of the data set's shape with
--synthetic (speed does not depend on the pixels), and it prints model-steps per second,
the FLOP/s that is (counted from the layer shapes) and its fraction of the card's peak
(a table of dense peaks for H100 and H200 SXM; other devices print "peak unknown"), and an
estimate for the whole recipe at that rate. `--smoke` makes it tiny (seconds on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from paramsim.data import Dataset, load_digits
from paramsim.zoo import RECIPES, train_one, train_stacked
from paramsim.zoo.build import plan_shards
from paramsim.zoo.trainer import ModelPlan, TaskData

# Dense (no structured sparsity) peaks in FLOP/s from NVIDIA's H100 and H200 datasheets: the
# SXM parts. "fp32" is the CUDA cores' rate; cuDNN runs float32 convolutions on TF32 tensor
# cores unless torch.backends.cudnn.allow_tf32 is False, so "tf32" is printed beside it.
PEAKS = {
    "H100 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H200 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
}
# What torch.cuda.get_device_name() calls these cards: H100 SXM reports "NVIDIA H100 80GB
# HBM3"; PCIe and NVL variants (lower clocks, other peaks) say so in their names.
DATASET_SHAPES = {"cifar100": ((3, 32, 32), 100), "cifar10": ((3, 32, 32), 10)}


def card(device_name: str) -> str | None:
    """The PEAKS row of a CUDA device name, or None when its peak is not in the table."""
    name = device_name.upper()
    if "PCIE" in name or "NVL" in name:
        return None
    if "H200" in name:
        return "H200 SXM"
    if "H100" in name and ("SXM" in name or "HBM3" in name):
        return "H100 SXM"
    return None


def matmul_flops(seconds: float = 2.0, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start)


def training_flops(plan: ModelPlan) -> float:
    """Multiply-adds of the convolutions and linear layers, forward + backward (3x forward),
    counted as 2 FLOPs each (batch-norm, pooling and the optimiser are left out)."""
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


def synthetic_dataset(name: str, per_class: int, seed: int = 0) -> Dataset:
    """Random images of the data set's shape and balanced labels: speed needs no pixels."""
    if name not in DATASET_SHAPES:
        raise SystemExit(f"error: no synthetic shape for data set {name!r}; drop --synthetic")
    shape, n_classes = DATASET_SHAPES[name]
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n_classes).repeat_interleave(n)
        return torch.rand((len(y), *shape), generator=gen), y

    (xtr, ytr), (xte, yte) = split(per_class), split(max(2, per_class // 5))
    return Dataset(name, xtr, ytr, xte, yte, n_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(args: argparse.Namespace) -> dict:
    """Train one shard of the recipe for args.steps steps; print and return the rates."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {args.device}, but torch here has no CUDA; use cpu")
    recipe = RECIPES[args.recipe]
    if args.synthetic:
        ds = synthetic_dataset(recipe.dataset, per_class=args.per_class)
    else:
        from paramsim.data import load_dataset

        ds = load_dataset(recipe.dataset, args.data_dir)
    _, plans = recipe.plan(ds.n_classes, ds.input_shape, seed=0)
    shard_size = args.shard_size or recipe.shard_size
    shards = plan_shards(plans, shard_size)
    batch = args.batch_size or plans[0].batch_size
    shard = [replace(p, steps=args.steps, batch_size=batch) for p in shards[0].plans]
    data = TaskData.build(ds, {p.task_id: p.task for p in shard})
    opts = {"precision": args.precision, "channels_last": args.channels_last}
    warm = [replace(p, steps=args.warmup) for p in shard]
    train_stacked(warm, data, device, **opts)  # allocation, cuDNN's algorithm search
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train_stacked(shard, data, device, **opts)
    _sync(device)
    seconds = time.perf_counter() - start
    rate = len(shard) * args.steps / seconds
    flops = sum(training_flops(p) for p in shard) / seconds
    # the whole recipe at this rate: each shard runs until its longest model stops
    recipe_steps = sum(len(s.plans) * max(p.steps for p in s.plans) for s in shards)
    out = {"model_steps_per_s": rate, "flops": flops, "recipe_minutes": recipe_steps / rate / 60}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"{args.recipe} on {name} ({args.precision}"
        f"{', channels_last' if args.channels_last else ''}): {len(shard)} models x "
        f"{args.steps} steps, batch {batch}, in {seconds:.2f} s"
    )
    print(f"  {rate:.1f} model-steps/s, {flops / 1e12:.3f} TFLOP/s (layer shapes, fwd+bwd)")
    row = card(name) if device.type == "cuda" else None
    if row is None:
        print("  peak unknown")
    else:
        key = "bf16" if args.precision == "bf16" else "fp32"
        out["peak_fraction"] = flops / PEAKS[row][key]
        line = f"  {out['peak_fraction']:.1%} of the {row} dense {key} peak"
        if key == "fp32" and torch.backends.cudnn.allow_tf32:
            line += f" ({flops / PEAKS[row]['tf32']:.1%} of its tf32 peak)"
        print(line)
    if device.type == "cuda":
        print(f"  peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    print(
        f"  whole recipe ({len(plans)} models, {len(shards)} shards of up to {shard_size}) "
        f"at this rate: {out['recipe_minutes']:.1f} min"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=45)
    parser.add_argument("--cnn-models", type=int, default=22)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--recipe", default=None, help="throughput of one shard of RECIPE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--synthetic", action="store_true", help="random inputs, no data files")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--shard-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--per-class", type=int, default=500, help="synthetic training rows")
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="2 models, 2 steps, batch 8")
    args = parser.parse_args(argv)
    if args.recipe:
        if args.recipe not in RECIPES:
            sys.exit(f"error: unknown recipe {args.recipe!r}")
        if args.smoke:
            args.shard_size, args.steps, args.warmup = 2, 2, 1
            args.batch_size, args.per_class = 8, 10
        if args.device == "cpu":
            torch.set_num_threads(int(args.threads.split(",")[0]))
        throughput(args)
        return
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        peak = matmul_flops()
        print(f"threads={threads}: large matmul {peak / 1e9:.1f} GFLOP/s")
        bench("digits-pairs", args.models, threads, peak)
        bench("digits-pairs-cnn", args.cnn_models, threads, peak)


if __name__ == "__main__":
    main()

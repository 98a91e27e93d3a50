"""How well candidate CNN settings train on the hardest Fashion-MNIST pairs.

    python benchmarks/choose_fashion_cnn.py [start deep3 ...]

Trains 3 models per pair on shirt/T-shirt (0-6), pullover/coat (2-4), pullover/shirt (2-6)
and coat/shirt (4-6) with draws of the `fashion-pairs-cnn` recipe as modified by each
candidate, and prints their test accuracies. It chose the recipe's settings (docs/RESULTS.md,
"Fashion-MNIST"); it needs the Fashion-MNIST files (`apt-get install dataset-fashion-mnist`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import torch

from paramsim.data import Task, load_dataset
from paramsim.zoo import RECIPES
from paramsim.zoo.trainer import TaskData, accuracies, train_stacked

PAIRS = [(0, 6), (2, 4), (2, 6), (4, 6)]
CANDIDATES = {
    "start": dict(
        archs=({"kind": "cnn", "hidden": (8, 16), "pool_after": (0,)},), log10_lr=(-3.0, -1.8)
    ),
    "lr-2.5": dict(
        archs=({"kind": "cnn", "hidden": (8, 16), "pool_after": (0,)},), log10_lr=(-2.5, -1.5)
    ),
    "deep3": dict(
        archs=({"kind": "cnn", "hidden": (8, 16, 32), "pool_after": (0, 1)},),
        log10_lr=(-2.7, -1.8),
    ),
    "deep3s": dict(
        archs=({"kind": "cnn", "hidden": (8, 8, 16), "pool_after": (0, 1)},),
        log10_lr=(-2.7, -1.8),
    ),
}


def main() -> None:
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist")
    for name in sys.argv[1:] or list(CANDIDATES):
        rec = replace(RECIPES["fashion-pairs-cnn"], **CANDIDATES[name])
        tasks = {tid: Task(((a,), (b,))) for tid, (a, b) in enumerate(PAIRS)}
        plans = []
        for tid, task in tasks.items():
            for _ in range(3):
                plans.append(rec.draw(len(plans), tid, task, ds.input_shape, 0))
        data = TaskData.build(ds, tasks)
        t0 = time.perf_counter()
        acc = accuracies(train_stacked(plans, data, "cpu"), data, "test")
        cells = " ".join(
            f"{PAIRS[p.task_id][0]}-{PAIRS[p.task_id][1]}:{a:.2f}"
            for p, a in zip(plans, acc, strict=True)
        )
        print(f"{name} ({time.perf_counter() - t0:.0f} s): {cells}", flush=True)


if __name__ == "__main__":
    main()

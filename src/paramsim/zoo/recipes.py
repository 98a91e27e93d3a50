"""Recipes: which tasks, architectures and training-setting ranges make up a model set.

Every model draws its own seed, learning rate (log-uniform), initial weight scale, fraction
of training data and number of steps from a generator keyed by (zoo seed, model id), so a
plan is reproducible and the benchmark cannot be solved by identical-settings shortcuts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from paramsim.data import Task, group_tasks, pair_tasks
from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec
from paramsim.zoo.trainer import ModelPlan


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset: str = "digits"
    tasks: str = "all"  # "all" | "disjoint" | "groups:N" | "3-7,1-2,..."
    models_per_task: int = 11
    # Architectures: (kind, hidden, weight) choices drawn per model; CNN entries may set
    # "batchnorm" and "pool_after".
    archs: tuple[dict, ...] = ({"kind": "mlp", "hidden": (32, 32)},)
    # Defaults calibrated so that fixed Gram baselines are not saturated (docs/RESULTS.md):
    # with lr 10^U[-2.7,-1.2], init scale U[0.5,2] and 200-400 steps the trained part of the
    # weights swamped the initialisation and first-layer Gram cosine reached mAP 0.98.
    log10_lr: tuple[float, float] = (-3.3, -1.82)  # a 30x range
    init_scale: tuple[float, float] = (0.5, 3.0)
    data_fraction: tuple[float, float] = (0.2, 1.0)
    steps: tuple[int, int] = (100, 300)
    batch_size: int = 32
    optimizer: str = "adam"
    min_test_acc: float = 0.0  # models below are retrained with fresh draws
    max_retrains: int = 3
    shard_size: int = 165
    description: str = ""

    def with_overrides(self, **kw) -> Recipe:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def task_list(self, n_classes: int, seed: int) -> list[Task]:
        if self.tasks.startswith("groups:"):
            count = self.tasks.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise ParamsimError(f"cannot read tasks {self.tasks!r}; write groups:N, N >= 1")
            return group_tasks(n_classes, int(count), seed=seed)
        return pair_tasks(n_classes, self.tasks)

    def draw(
        self, model_id: int, task_id: int, task: Task, input_shape, seed: int, attempt: int = 0
    ):
        """The plan of one model; `attempt` > 0 gives fresh draws for a retrain."""
        rng = np.random.default_rng([seed, model_id, attempt])
        weights = np.array([a.get("weight", 1.0) for a in self.archs], dtype=float)
        choice = dict(self.archs[rng.choice(len(self.archs), p=weights / weights.sum())])
        choice.pop("weight", None)
        arch = ArchSpec(input_shape=input_shape, n_outputs=2, **choice)
        lo, hi = self.steps
        return ModelPlan(
            model_id=model_id,
            task_id=task_id,
            task=task,
            arch=arch,
            seed=int(rng.integers(0, 2**31 - 1)),
            lr=float(10 ** rng.uniform(*self.log10_lr)),
            init_scale=float(rng.uniform(*self.init_scale)),
            data_fraction=float(rng.uniform(*self.data_fraction)),
            steps=int(rng.integers(lo, hi + 1)),
            batch_size=self.batch_size,
            optimizer=self.optimizer,
        )

    def plan(self, n_classes: int, input_shape, seed: int) -> tuple[list[Task], list[ModelPlan]]:
        tasks = self.task_list(n_classes, seed)
        plans = []
        for tid, task in enumerate(tasks):
            for _ in range(self.models_per_task):
                plans.append(self.draw(len(plans), tid, task, input_shape, seed))
        return tasks, plans


_DIGIT_CNN = {"kind": "cnn", "hidden": (8, 16)}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "digits-pairs",
            description="45 digit-pair tasks x 11 MLPs 64-32-32-2 (the default)",
        ),
        Recipe(
            "digits-pairs-cnn",
            archs=(_DIGIT_CNN,),
            log10_lr=(-3.0, -1.8),
            init_scale=(0.5, 2.0),
            steps=(300, 300),
            min_test_acc=0.9,
            description="45 digit-pair tasks x 11 small CNNs (3x3 convs, global pooling)",
        ),
        Recipe(
            "digits-pairs-mixed",
            archs=(
                {"kind": "mlp", "hidden": (16,)},
                {"kind": "mlp", "hidden": (64,)},
                {"kind": "mlp", "hidden": (16, 16)},
                {"kind": "mlp", "hidden": (32, 32)},
                {"kind": "mlp", "hidden": (64, 32)},
                {"kind": "mlp", "hidden": (48, 24, 16)},
                {**_DIGIT_CNN, "weight": 1.5},
            ),
            steps=(150, 400),
            min_test_acc=0.85,
            description="45 digit-pair tasks x 11 models of varied widths, depths and CNNs",
        ),
        Recipe(
            "digits-groups",
            tasks="groups:300",
            models_per_task=6,
            min_test_acc=0.8,
            description="300 binary tasks between digit groups x 6 MLPs (metric training)",
        ),
        Recipe(
            "cifar100-modelset500",
            dataset="cifar100",
            tasks="disjoint",
            models_per_task=10,
            archs=(
                {
                    "kind": "cnn",
                    "hidden": (32, 64, 128, 256),
                    "batchnorm": True,
                    "pool_after": (0, 1, 2),
                },
            ),
            log10_lr=(-2.0, -1.0),
            steps=(2000, 4000),
            batch_size=128,
            optimizer="sgd",
            shard_size=50,
            description="ModelSet500: 50 disjoint CIFAR-100 pairs x 10 CNNs (needs --data-dir)",
        ),
        Recipe(
            "idx-pairs",
            dataset="idx",
            models_per_task=5,
            archs=({"kind": "mlp", "hidden": (128, 64)},),
            steps=(300, 600),
            batch_size=64,
            description="class pairs of any IDX (MNIST-format) dataset (needs --data-dir)",
        ),
    ]
}


def _tupled(value):
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    if isinstance(value, dict):
        return {k: _tupled(v) for k, v in value.items()}
    return value


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a TOML file whose keys are Recipe fields.

    A TOML file may set `base = "digits-pairs"` to start from a built-in recipe.
    """
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.is_file():
        names = ", ".join(RECIPES)
        raise ParamsimError(f"unknown recipe {name_or_path!r}; use one of {names} or a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ParamsimError(f"{path} is not valid TOML: {exc}") from exc
    base = RECIPES.get(data.pop("base", ""), Recipe(name=path.stem))
    known = {f.name for f in fields(Recipe)}
    unknown = set(data) - known
    if unknown:
        raise ParamsimError(
            f"{path}: unknown recipe keys {sorted(unknown)}; known: {sorted(known)}"
        )
    data.setdefault("name", path.stem)
    return replace(base, **{k: _tupled(v) for k, v in data.items()})


__all__ = ["RECIPES", "Recipe", "load_recipe"]

"""Recipes: which tasks, architectures and training-setting ranges make up a model set.

Every model draws its own seed, learning rate (log-uniform), initial weight scale, fraction
of training data and number of steps from a generator keyed by (zoo seed, model id), so a
plan is reproducible and the benchmark cannot be solved by identical-settings shortcuts.

Every field is checked when a recipe is made (`Recipe.validate`), built-in or from TOML:
type, range and known names, with an error that names the field and what it allows. The
limits below bound what a recipe can ask for, so that a typo cannot hang a build or
exhaust memory; they are well above every built-in recipe.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from paramsim.data import Task, group_tasks, pair_tasks
from paramsim.data.tasks import task_key
from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec
from paramsim.zoo.trainer import ModelPlan

# Limits on what a recipe may ask for (documented in docs/ZOO.md, "Recipe fields").
DATASETS = ("digits", "fashion-mnist", "idx", "cifar10", "cifar100")
OPTIMIZERS = ("adam", "sgd")
ARCH_KINDS = ("mlp", "cnn")
ARCH_KEYS = ("kind", "hidden", "weight", "batchnorm", "pool_after")
MAX_MODELS_PER_TASK = 1000
MAX_GROUP_TASKS = 10_000
MAX_ARCHS = 64
MAX_DEPTH = 8  # hidden layers (MLP) or conv layers (CNN)
MAX_WIDTH = 4096  # units of one hidden layer or channels of one conv layer
MAX_STEPS = 100_000
MAX_BATCH = 4096
MAX_RETRAINS = 10
MAX_SHARD = 1000
LOG10_LR = (-8.0, 1.0)  # learning rates from 1e-8 to 10: never 0, never infinite
MAX_INIT_SCALE = 100.0
MAX_VAL_FRACTION = 0.5
LEGACY_VAL_FRACTION = 0.15  # validation share given to zoos recorded before val_fraction existed
MAX_MODELS = 200_000  # planned models of one zoo
MAX_MODEL_VALUES = 2**24  # parameters and buffers of one model (64 MB in float32)
MAX_SHARD_VALUES = 2**26  # of all models trained together (about 1 GB with Adam state)
MAX_TOML_BYTES = 1 << 20


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(field: str, value, allowed: str) -> ParamsimError:
    return ParamsimError(f"recipe field {field} = {_show(value)} is not valid; allowed: {allowed}")


def _check_int(field: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(field, value, f"an integer from {lo} to {hi}")


def _check_number(field: str, value, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo < value if lo_open else lo <= value) or value > hi:
        raise _bad(field, value, f"a number in {'(' if lo_open else '['}{lo}, {hi}]")


def _check_pair(field: str, value, check, allowed: str) -> None:
    """A [low, high] range whose ends each pass `check` and with low <= high."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise _bad(field, value, f"a pair [low, high] of {allowed}")
    check(f"{field}[0]", value[0])
    check(f"{field}[1]", value[1])
    if value[0] > value[1]:
        raise _bad(field, value, f"[low, high] with low <= high, each {allowed}")


def _check_choice(field: str, value, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise _bad(field, value, " | ".join(allowed))


def _check_tasks(value) -> None:
    allowed = "all | disjoint | groups:N (N from 1 to {}) | pairs like 0-1,2-3 or 1+2v3"
    allowed = allowed.format(MAX_GROUP_TASKS)
    if not isinstance(value, str):
        raise _bad("tasks", value, allowed)
    if value in ("all", "disjoint"):
        return
    if value.startswith("groups:"):
        count = value.split(":", 1)[1]
        if not re.fullmatch(r"[0-9]{1,6}", count) or not 1 <= int(count) <= MAX_GROUP_TASKS:
            raise _bad("tasks", value, allowed)
        return
    seen = set()
    for item in value.split(","):
        try:
            task = Task.parse(item)
        except ParamsimError:
            raise _bad("tasks", value, allowed) from None
        key = task_key(task)  # "1-0" repeats "0-1": the same question, sides swapped
        if any(len(set(side)) != len(side) for side in task.sides) or key in seen:
            raise _bad(
                "tasks", value, allowed + ", each task once (in either order), each class once"
            )
        seen.add(key)


def _check_arch(i: int, arch) -> None:
    field = f"archs[{i}]"
    if not isinstance(arch, dict):
        raise _bad(field, arch, "a table {kind, hidden, weight, batchnorm, pool_after}")
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise _bad(f"{field}.{unknown[0]}", arch[unknown[0]], "the keys " + ", ".join(ARCH_KEYS))
    if "kind" not in arch or "hidden" not in arch:
        raise _bad(field, arch, "a table with at least kind and hidden")
    _check_choice(f"{field}.kind", arch["kind"], ARCH_KINDS)
    hidden = arch["hidden"]
    widths = f"a list of 1 to {MAX_DEPTH} integers from 1 to {MAX_WIDTH}"
    if not isinstance(hidden, Sequence) or isinstance(hidden, str):
        raise _bad(f"{field}.hidden", hidden, widths)
    if not 1 <= len(hidden) <= MAX_DEPTH:
        raise _bad(f"{field}.hidden", hidden, widths)
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise _bad(f"{field}.hidden", hidden, widths)
    if "weight" in arch:
        _check_number(f"{field}.weight", arch["weight"], 0.0, 1e6, lo_open=True)
    cnn_only = [k for k in ("batchnorm", "pool_after") if k in arch]
    if arch["kind"] == "mlp" and cnn_only:
        raise _bad(f"{field}.{cnn_only[0]}", arch[cnn_only[0]], "nothing: it is for CNNs only")
    if not isinstance(arch.get("batchnorm", False), bool):
        raise _bad(f"{field}.batchnorm", arch["batchnorm"], "true | false")
    pools = arch.get("pool_after", ())
    layers = f"distinct conv layer indices from 0 to {len(hidden) - 1}"
    if not isinstance(pools, Sequence) or isinstance(pools, str):
        raise _bad(f"{field}.pool_after", pools, layers)
    for p in pools:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < len(hidden):
            raise _bad(f"{field}.pool_after", pools, layers)
    if len(set(pools)) != len(pools):
        raise _bad(f"{field}.pool_after", pools, layers)


def task_seed(seed: int, task: Task) -> int:
    """The seed that picks a task's validation rows: fixed by the zoo seed and the task."""
    a, b = task.sides
    return int(np.random.SeedSequence([seed, len(a), *a, *b]).generate_state(1)[0])


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
    data_fraction: tuple[float, float] = (0.2, 1.0)  # of the training pool
    steps: tuple[int, int] = (100, 300)
    batch_size: int = 32
    optimizer: str = "adam"
    # Models whose accuracy on held-out validation rows of the training split (never the
    # test split) is below `min_val_acc` are retrained with fresh draws, at most
    # `max_retrains` times. TOML files may still spell it `min_test_acc`, its old name.
    min_val_acc: float = 0.0
    max_retrains: int = 3
    # Share of each task's training examples held out as validation (the same rows for all
    # models of a task, drawn from the zoo seed); 0 holds out nothing.
    val_fraction: float = 0.0
    shard_size: int = 165
    description: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse any field of the wrong type, out of range or not a known name."""
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 200:
            raise _bad("name", self.name, "a string of 1 to 200 characters")
        _check_choice("dataset", self.dataset, DATASETS)
        _check_tasks(self.tasks)
        _check_int("models_per_task", self.models_per_task, 1, MAX_MODELS_PER_TASK)
        if not isinstance(self.archs, Sequence) or not 1 <= len(self.archs) <= MAX_ARCHS:
            raise _bad("archs", self.archs, f"a list of 1 to {MAX_ARCHS} architecture tables")
        for i, arch in enumerate(self.archs):
            _check_arch(i, arch)

        def lr(f, v):
            _check_number(f, v, *LOG10_LR)

        def scale(f, v):
            _check_number(f, v, 0.0, MAX_INIT_SCALE, lo_open=True)

        def fraction(f, v):
            _check_number(f, v, 0.0, 1.0, lo_open=True)

        def steps(f, v):
            _check_int(f, v, 1, MAX_STEPS)

        _check_pair("log10_lr", self.log10_lr, lr, f"numbers in [{LOG10_LR[0]}, {LOG10_LR[1]}]")
        _check_pair("init_scale", self.init_scale, scale, f"numbers in (0, {MAX_INIT_SCALE}]")
        _check_pair("data_fraction", self.data_fraction, fraction, "numbers in (0, 1]")
        _check_pair("steps", self.steps, steps, f"integers from 1 to {MAX_STEPS}")
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_number("min_val_acc", self.min_val_acc, 0.0, 1.0)
        _check_int("max_retrains", self.max_retrains, 0, MAX_RETRAINS)
        _check_number("val_fraction", self.val_fraction, 0.0, MAX_VAL_FRACTION)
        if self.min_val_acc > 0 and self.val_fraction == 0:
            raise _bad(
                "val_fraction",
                self.val_fraction,
                f"a share in (0, {MAX_VAL_FRACTION}] when min_val_acc > 0 (models are "
                "selected on validation rows, never on the test split), e.g. 0.15",
            )
        _check_int("shard_size", self.shard_size, 1, MAX_SHARD)
        if not isinstance(self.description, str):
            raise _bad("description", self.description, "a string")

    @classmethod
    def from_settings(cls, settings: dict) -> Recipe:
        """The recipe a zoo recorded (`meta["recipe_settings"]`, JSON lists for tuples). Fields
        this version does not know are left out.

        A zoo built before validation rows existed recorded `min_test_acc` (a floor checked on
        the test split) and no `val_fraction`; it reads as `min_val_acc` with the built-in
        recipes' validation share, so a recipe derived from the zoo (LPS's auxiliary zoo)
        selects its models on validation rows instead of failing to load."""
        data = dict(settings)
        if "min_test_acc" in data and "min_val_acc" not in data:
            data["min_val_acc"] = data.pop("min_test_acc")
            floor = data["min_val_acc"]
            real = isinstance(floor, (int, float)) and not isinstance(floor, bool)
            if real and floor > 0 and data.get("val_fraction") is None:  # the rest: validate()
                data["val_fraction"] = LEGACY_VAL_FRACTION
        known = {f.name for f in fields(cls)}
        return cls(**{k: _tupled(v) for k, v in data.items() if k in known})

    def with_overrides(self, **kw) -> Recipe:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def task_count(self, n_classes: int) -> int:
        """How many tasks `tasks` names, known before any are drawn."""
        if self.tasks == "all":
            return n_classes * (n_classes - 1) // 2
        if self.tasks == "disjoint":
            return n_classes // 2
        if self.tasks.startswith("groups:"):
            return int(self.tasks.split(":", 1)[1])
        return len(self.tasks.split(","))

    def task_list(self, n_classes: int, seed: int) -> list[Task]:
        if self.tasks.startswith("groups:"):
            return group_tasks(n_classes, int(self.tasks.split(":", 1)[1]), seed=seed)
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
            val_fraction=float(self.val_fraction),
            val_seed=task_seed(seed, task) if self.val_fraction > 0 else 0,
        )

    def plan(self, n_classes: int, input_shape, seed: int) -> tuple[list[Task], list[ModelPlan]]:
        """Tasks and model plans, refused before any training if they exceed the limits."""
        n_models = self.task_count(n_classes) * self.models_per_task
        if n_models > MAX_MODELS:
            raise ParamsimError(
                f"recipe {self.name} plans {self.task_count(n_classes)} tasks x "
                f"{self.models_per_task} models, more than the limit of {MAX_MODELS}; "
                "lower models_per_task or the number of tasks"
            )
        self.check_size(input_shape, n_models)
        tasks = self.task_list(n_classes, seed)
        plans = []
        for tid, task in enumerate(tasks):
            for _ in range(self.models_per_task):
                plans.append(self.draw(len(plans), tid, task, input_shape, seed))
        return tasks, plans

    def check_size(self, input_shape, n_models: int) -> None:
        """Refuse architectures too large for one model or one shard, or pooled to nothing."""
        c, h, w = (int(v) for v in input_shape)
        together = min(self.shard_size, n_models)
        for i, spec in enumerate(self.archs):
            pools = spec.get("pool_after", ())
            if min(h, w) >> len(pools) < 1:
                raise _bad(
                    f"archs[{i}].pool_after",
                    pools,
                    f"at most {int(math.log2(min(h, w)))} poolings of {h}x{w} inputs",
                )
            try:
                arch = ArchSpec(
                    kind=spec["kind"],
                    input_shape=(c, h, w),
                    hidden=spec["hidden"],
                    batchnorm=spec.get("batchnorm", False),
                    pool_after=pools,
                )
            except ParamsimError as exc:
                allowed = f"an architecture for {c}x{h}x{w} inputs ({exc})"
                raise _bad(f"archs[{i}]", spec, allowed) from None
            if arch.n_params > MAX_MODEL_VALUES:
                raise _bad(
                    f"archs[{i}].hidden",
                    spec["hidden"],
                    f"widths giving at most {MAX_MODEL_VALUES} values per model on "
                    f"{c}x{h}x{w} inputs (these give {arch.n_params})",
                )
            if arch.n_params * together > MAX_SHARD_VALUES:
                raise _bad(
                    "shard_size",
                    self.shard_size,
                    f"at most {MAX_SHARD_VALUES // arch.n_params} models of archs[{i}] trained "
                    f"together ({MAX_SHARD_VALUES} values per shard)",
                )


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
            min_val_acc=0.9,
            val_fraction=0.15,
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
            min_val_acc=0.85,
            val_fraction=0.15,
            description="45 digit-pair tasks x 11 models of varied widths, depths and CNNs",
        ),
        Recipe(
            "digits-groups",
            tasks="groups:300",
            models_per_task=6,
            min_val_acc=0.8,
            val_fraction=0.15,
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
        # Fashion-MNIST (28x28 clothing images): the realistic benchmark. Read from
        # --data-dir, else from where Debian's dataset-fashion-mnist package puts it.
        Recipe(
            "fashion-pairs",
            dataset="fashion-mnist",
            description="45 Fashion-MNIST pair tasks x 11 MLPs 784-32-32-2 (digits-pairs ranges)",
        ),
        # Three convs with pooling after the first two: on the hardest pairs (shirt vs
        # T-shirt, pullover vs coat, ...) the two-conv 8-16 CNN reached test accuracy
        # 0.59-0.77 and this one 0.67-0.84 in 300 steps (benchmarks/choose_fashion_cnn.py),
        # so a floor of 0.8 would retrain most hard-pair models to no avail; 0.75 (on held-out
        # validation rows of the training split) retrains
        # the failures.
        Recipe(
            "fashion-pairs-cnn",
            dataset="fashion-mnist",
            archs=({"kind": "cnn", "hidden": (8, 16, 32), "pool_after": (0, 1)},),
            log10_lr=(-2.7, -1.8),
            init_scale=(0.5, 2.0),
            steps=(300, 300),
            min_val_acc=0.75,
            val_fraction=0.15,
            shard_size=55,  # a finished shard is kept: long builds lose less when stopped
            description="45 Fashion-MNIST pair tasks x 11 CNNs 8-16-32 (3x3 convs, 2 pools, GAP)",
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

    A TOML file may set `base = "digits-pairs"` (a built-in name, nothing else) to start
    from a built-in recipe; `min_test_acc` is read as `min_val_acc`, its new name.
    """
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    path = Path(name_or_path)
    names = " | ".join(RECIPES)
    if path.suffix != ".toml" or not path.is_file():
        raise ParamsimError(f"unknown recipe {name_or_path!r}; use one of {names} or a .toml file")
    try:
        if path.stat().st_size > MAX_TOML_BYTES:
            raise ParamsimError(f"{path} is over {MAX_TOML_BYTES} bytes; a recipe is a few lines")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ParamsimError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ParamsimError(f"cannot read recipe {path}: {exc.strerror or exc}") from exc
    settings: dict = {}
    if "base" in data:
        base = data.pop("base")
        if not isinstance(base, str) or base not in RECIPES:
            raise ParamsimError(
                f"{path}: recipe field base = {_show(base)} is not valid; allowed: {names}"
            )
        settings = {f.name: getattr(RECIPES[base], f.name) for f in fields(Recipe)}
    if "min_test_acc" in data:
        if "min_val_acc" in data:
            raise ParamsimError(f"{path}: set min_val_acc only (min_test_acc is its old name)")
        data["min_val_acc"] = data.pop("min_test_acc")
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ParamsimError(
            f"{path}: unknown recipe field {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    data.setdefault("name", path.stem)
    settings.update({k: _tupled(v) for k, v in data.items()})
    try:
        return Recipe(**settings)
    except ParamsimError as exc:
        raise ParamsimError(f"{path}: {exc}") from None


__all__ = ["RECIPES", "Recipe", "load_recipe", "task_seed"]

"""The auxiliary group-task zoo that the default LPS trains on beside a zoo's own models.

A metric trained on the few dozen tasks of one zoo learns those tasks; many more varied
tasks teach it how tasks differ. So `fit` (and `eval`, `reproduce`, which fit through it)
trains, once, a small zoo of binary tasks between class groups ({a,b} vs {c}, ...) with the
zoo's own recipe (architectures, training ranges) and data set, and caches it in
`ZOO/auxiliary/`. Group tasks are never plain pairs, so a held-out pair task is never among
them; `paramsim.lps.fit.filter_extra` still checks every extra task against the held-out ones,
and `usable_auxiliary` keeps only group tasks among the classes the training tasks use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from paramsim.errors import ParamsimError
from paramsim.zoo.store import AUXILIARY

AUX_DIR = AUXILIARY  # inside the zoo directory, which `zoo build` knows as its own
SMALL_SHARD = 40


def auxiliary_recipe(zoo, n_tasks: int, models_per_task: int):
    """The zoo's recipe with its tasks replaced by `n_tasks` group tasks.

    Models that miss the recipe's accuracy floor are retrained at most once: an auxiliary
    model only has to carry its task, and group tasks of hard classes would otherwise cost
    several rounds. A shard holds the training images of all its tasks in memory, and a
    group task has up to five classes, so on images larger than 16x16 (Fashion-MNIST) a
    shard holds at most SMALL_SHARD models (165 took 8.5 GB there); sharding never changes
    a trained model.
    """
    from paramsim.zoo import Recipe

    settings = zoo.meta.get("recipe_settings")
    if not isinstance(settings, dict):
        raise ParamsimError(f"{zoo.path} records no recipe; rebuild it with `paramsim zoo build`")
    rec = Recipe.from_settings(settings)
    c, h, w = zoo.records[0].arch.input_shape
    shard = min(rec.shard_size, SMALL_SHARD) if h * w > 256 else rec.shard_size
    return replace(
        rec,
        shard_size=shard,
        name=f"{rec.name}-aux",
        tasks=f"groups:{n_tasks}",
        models_per_task=models_per_task,
        max_retrains=min(rec.max_retrains, 1),
        description=f"auxiliary group tasks for LPS, from {rec.name}",
    )


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def auxiliary_dir(zoo_dir: str | Path, n_tasks: int, models_per_task: int) -> Path:
    """Where the auxiliary zoo of `zoo_dir` lives: inside it, or in the user's cache when the
    zoo is read-only. The name carries a digest of the zoo and recipe, so a rebuilt zoo or
    other settings never reuse a stale one."""
    from paramsim.zoo import Zoo

    zoo_dir = Path(zoo_dir).resolve()
    zoo = Zoo.open(zoo_dir)
    rec = auxiliary_recipe(zoo, n_tasks, models_per_task)
    key = json.dumps(
        {
            "recipe": rec.__dict__,
            "seed": zoo.meta.get("seed"),
            "dataset": zoo.meta["dataset"],
            # 2: group tasks drawn without swapped twins (session 17); an older zoo drew
            # other tasks for the same settings and must not be resumed or reused
            "draw": 2,
        },
        sort_keys=True,
        default=list,
    )
    name = f"groups-{n_tasks}x{models_per_task}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    if _writable(zoo_dir):
        return zoo_dir / AUX_DIR / name
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = hashlib.sha256(str(zoo_dir).encode()).hexdigest()[:10]
    return cache / "paramsim" / AUX_DIR / f"{zoo_dir.name}-{where}" / name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per auxiliary zoo (parallel evals share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _intact(out: Path) -> bool:
    """Complete and every shard matching its sha256: anything less is resumed by build_zoo,
    which retrains exactly the missing or damaged shards (the user never built this zoo, so
    an error telling them to rebuild it would not help)."""
    from paramsim.zoo import Zoo

    if not (out / "registry.sqlite").is_file():
        return False
    zoo = Zoo.open(out)
    return zoo.summary_complete and not zoo.verify()


TASKS_PER_ZOO_TASK = 3  # a small zoo (a test's) gets a proportionally small auxiliary zoo


def auxiliary_zoo(
    zoo_dir: str | Path, n_tasks: int, models_per_task: int, progress: bool = False
) -> Path:
    """The auxiliary zoo's directory, built (or resumed) first when it is not complete.

    It has min(`n_tasks`, 3 x the zoo's task count) group tasks of `models_per_task` models,
    trained with the zoo's seed + 1, so no auxiliary model repeats a zoo model's draws.
    """
    from paramsim.zoo import Zoo, build_zoo

    zoo = Zoo.open(zoo_dir)
    n_tasks = min(n_tasks, TASKS_PER_ZOO_TASK * len(zoo.tasks))
    out = auxiliary_dir(zoo_dir, n_tasks, models_per_task)
    if _intact(out):
        return out
    rec = auxiliary_recipe(zoo, n_tasks, models_per_task)
    with _locked(out.with_name(out.name + ".lock")):
        if not _intact(out):
            # a long first step that later runs skip: say so even without a progress bar
            print(
                f"LPS: building its auxiliary zoo ({n_tasks} group tasks x {models_per_task} "
                f"models, {rec.name}) in {out}; later fits reuse it",
                file=sys.stderr,
                flush=True,
            )
            build_zoo(
                rec,
                out,
                seed=int(zoo.meta.get("seed", 0)) + 1,
                data_dir=zoo.meta.get("data_dir"),
                progress=progress,
            )
    return out


def usable_auxiliary(
    networks: Sequence, tasks: Sequence, train_tasks: Sequence
) -> tuple[list, list]:
    """The auxiliary models that may train beside `train_tasks`: those whose classes all
    appear in the training tasks, so a class held out of training (the held-out-classes
    protocol, or a user's own exclusion) never reaches the metric through a group task."""
    seen = frozenset().union(*(t.classes for t in train_tasks))
    keep = [i for i, t in enumerate(tasks) if t.classes <= seen]
    return [networks[i] for i in keep], [tasks[i] for i in keep]

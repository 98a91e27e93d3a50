"""Build a zoo from a recipe as independent shards, resuming where a killed build stopped.

A shard is a list of model plans trained together; it depends on nothing but its plans and
the dataset, so shards could run on different machines and be merged by their rows.

A rerun into the same --out keeps exactly the shards whose file matches the sha256 in the
registry and trains the others again (missing, damaged or never committed); the same seeds
give the same tensors, so the rebuilt zoo equals one built in a single run.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import numbers
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch

from paramsim.atomic import check_output_dir
from paramsim.data import Dataset, check_tasks_have_examples, load_dataset
from paramsim.errors import ParamsimError
from paramsim.zoo.recipes import Recipe
from paramsim.zoo.store import (
    FORMAT,
    MODEL_COLUMNS,
    REGISTRY,
    SHARDS,
    ZOO_TO_RESUME,
    atomic_save_tensors,
    connect,
    file_sha256,
    remove_stale_temps,
    tensors_sha256,
)
from paramsim.zoo.trainer import (
    ModelPlan,
    TaskData,
    accuracies,
    check_precision,
    train_stacked,
)


@dataclass(frozen=True)
class Shard:
    name: str
    plans: tuple[ModelPlan, ...]


def family_key(plan: ModelPlan) -> tuple:
    """Plans with equal keys can be trained together (narrower ones padded)."""
    a = plan.arch
    return (a.kind, len(a.hidden), a.batchnorm, a.pool_after, plan.batch_size, plan.optimizer)


def plan_shards(plans: list[ModelPlan], shard_size: int) -> list[Shard]:
    """Group plans by trainable family, then cut into shards of similar step counts.

    A shard runs until its longest model is done, so grouping models by their number of
    steps saves the work of models that have already stopped. Each model trains exactly
    as it would alone, so the grouping does not change any result.
    """
    if shard_size < 1:
        raise ParamsimError(f"shard size must be at least 1, not {shard_size}")
    families: dict[tuple, list[ModelPlan]] = {}
    for p in plans:
        families.setdefault(family_key(p), []).append(p)
    shards = []
    for fam in families.values():
        fam = sorted(fam, key=lambda p: (p.steps, p.model_id))
        for start in range(0, len(fam), shard_size):
            chunk = tuple(fam[start : start + shard_size])
            shards.append(Shard(f"shard-{len(shards):05d}.safetensors", chunk))
    return shards


class TrainedModel(NamedTuple):
    plan: ModelPlan  # the plan of the attempt that was kept
    state_dict: dict[str, torch.Tensor]
    train_acc: float  # on the rows it could train on
    val_acc: float  # on its task's held-out training rows (NaN when none are held out)
    test_acc: float
    retrains: int


def train_shard(
    shard: Shard,
    recipe: Recipe,
    dataset: Dataset,
    seed: int,
    device: str = "cpu",
    on_step: Callable[[int], None] | None = None,
    precision: str = "float32",
    channels_last: bool = False,
) -> list[TrainedModel]:
    """Train a shard; retrain models below the recipe's `min_val_acc` with fresh draws.

    Selection reads only the validation rows held out of each task's training split, never
    the test split, which transfer and the data-based references score on.
    Returns one TrainedModel per plan, in plan order.
    """
    plans = list(shard.plans)
    data = TaskData.build(dataset, {p.task_id: p.task for p in plans})
    results: dict[int, TrainedModel] = {}
    todo = plans
    attempt = 0
    while todo:
        stack = train_stacked(
            todo,
            data,
            device,
            on_step if attempt == 0 else None,
            precision=precision,
            channels_last=channels_last,
        )
        tr, va, te = (accuracies(stack, data, split) for split in ("train", "val", "test"))
        retry = []
        for i, p in enumerate(todo):
            sd = stack.state_dict(i)
            results[p.model_id] = TrainedModel(
                p, sd, float(tr[i]), float(va[i]), float(te[i]), attempt
            )
            if va[i] < recipe.min_val_acc and attempt < recipe.max_retrains:
                retry.append(p)
        attempt += 1
        todo = [
            recipe.draw(p.model_id, p.task_id, p.task, p.arch.input_shape, seed, attempt)
            for p in retry
        ]
        # A retrain must stay in the shard's family so it trains with the others.
        todo = [
            new if family_key(new) == family_key(old) else replace(new, arch=old.arch)
            for new, old in zip(todo, retry, strict=True)
        ]
    return [results[p.model_id] for p in plans]


def check_out(out: Path) -> None:
    """Refuse an --out that is not new, empty or a zoo (a file, a link, a user's folder).

    A build never writes into (or deletes from) a folder of the user's files.
    """
    check_output_dir(out, ZOO_TO_RESUME, overwrite=False, resume=True)
    if (out / SHARDS).exists() and not (out / SHARDS).is_dir():
        raise ParamsimError(f"{out / SHARDS} is not a directory; this zoo is damaged")
    if (out / REGISTRY).is_file():
        connect(out).close()  # refuses another program's database before any work


@contextlib.contextmanager
def build_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the zoo directory: one build writes into it at a time."""
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ParamsimError(f"another build is writing into {out}; wait for it") from None
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class ShardContext:
    """What every shard job needs besides its plans. An executor that ships jobs elsewhere
    (Ray) gets it without `dataset` and `on_step`: workers read the data set themselves."""

    recipe: Recipe
    seed: int
    device: str
    data_dir: str | None
    dataset: Dataset | None = None
    on_step: Callable[[int], None] | None = None
    precision: str = "float32"
    channels_last: bool = False


@functools.lru_cache(maxsize=2)
def _worker_dataset(name: str, data_dir: str | None) -> Dataset:
    return load_dataset(name, data_dir)


def run_shard(ctx: ShardContext, shard: Shard) -> tuple[list[TrainedModel], float]:
    """One shard job: (train_shard's results, seconds). It writes nothing."""
    if ctx.device.startswith("cuda") and not torch.cuda.is_available():
        raise ParamsimError(f"--device {ctx.device}, but torch here has no CUDA; use cpu")
    dataset = ctx.dataset or _worker_dataset(ctx.recipe.dataset, ctx.data_dir)
    start = time.perf_counter()
    results = train_shard(
        shard,
        ctx.recipe,
        dataset,
        ctx.seed,
        ctx.device,
        ctx.on_step,
        precision=ctx.precision,
        channels_last=ctx.channels_last,
    )
    return results, time.perf_counter() - start


def build_zoo(
    recipe: Recipe,
    out: str | Path,
    seed: int = 0,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    progress: bool = True,
    executor=None,
    precision: str = "float32",
    channels_last: bool = False,
) -> Path:
    """Build (or resume, or repair) the zoo in `out`. Returns the directory.

    `executor` (paramsim.executors) runs the shard jobs, by default in this process; the
    driver alone writes shards and registry rows, in the order the jobs finish.
    `precision` ("float32" or "bf16" autocast, trainer.PRECISIONS) is recorded in the
    registry, and a resume with another precision is refused: a zoo never mixes the two.
    `channels_last` only changes the memory layout of CNN convolutions (for GPUs)."""
    from paramsim.executors import LocalExecutor

    executor = executor or LocalExecutor()
    local = executor.name == "local"
    out = Path(out)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ParamsimError(f"zoo seed {seed!r} is not valid; use an integer from 0 to 2**32-1")
    check_precision(precision)
    check_out(out)
    dataset = load_dataset(recipe.dataset, data_dir)
    tasks, plans = recipe.plan(dataset.n_classes, dataset.input_shape, seed)
    check_tasks_have_examples(tasks, dataset)
    if not plans:
        raise ParamsimError("the recipe plans no models; check --tasks and --models-per-task")
    shards = plan_shards(plans, recipe.shard_size)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(seed)
    meta = {
        "recipe": recipe.name,
        "recipe_settings": json.loads(json.dumps(recipe.__dict__, default=list)),
        "dataset": recipe.dataset,
        "data_dir": str(data_dir) if data_dir else None,
        "seed": seed,
        "planned_models": len(plans),
        "format": FORMAT,
        "precision": precision,
    }
    say = (lambda text: print(text, file=sys.stderr)) if progress else (lambda text: None)
    with build_lock(out):
        for name in remove_stale_temps(out / SHARDS):
            say(f"removed {name}, left by a killed build")
        conn = connect(out)
        try:
            _write_meta(conn, out, meta, tasks)
            remaining = _shards_to_train(conn, out, shards, say)
            total = sum(max(p.steps for p in s.plans) for s in remaining)
            bar = _progress(total if local else len(remaining), progress, recipe, local)
            ctx = ShardContext(
                recipe,
                seed,
                device,
                str(Path(data_dir).resolve()) if data_dir else None,  # workers' cwd differs
                dataset if local else None,
                (lambda _t: bar.update(1)) if local else None,
                precision,
                channels_last,
            )
            for pos, (results, seconds) in executor.map(run_shard, ctx, remaining):
                if not local:
                    bar.update(1)
                _write_shard(conn, out, remaining[pos], results, seconds, seed)
            bar.close()
        finally:
            conn.close()
    return out


def _shards_to_train(conn, out: Path, shards: list[Shard], say) -> list[Shard]:
    """Shards not committed, or whose file is missing or fails its recorded sha256."""
    try:
        recorded = {
            n: (d, k) for n, d, k in conn.execute("SELECT name, sha256, n_models FROM shards")
        }
        rows = dict(conn.execute("SELECT shard, COUNT(*) FROM models GROUP BY shard"))
    except sqlite3.DatabaseError as exc:
        raise ParamsimError(f"{out / REGISTRY} is not a registry of ours ({exc})") from exc
    remaining = []
    for shard in shards:
        if shard.name not in recorded:
            remaining.append(shard)
            continue
        digest, n_models = recorded[shard.name]
        path = out / SHARDS / shard.name
        intact = (
            n_models == len(shard.plans) == rows.get(shard.name)
            and path.is_file()
            and not path.is_symlink()
            and file_sha256(path) == digest
        )
        if not intact:
            say(f"{shard.name} is missing or damaged (checksum); training it again")
            remaining.append(shard)
    return remaining


def _write_shard(
    conn, out: Path, shard: Shard, results: list[TrainedModel], seconds: float, seed: int
) -> None:
    """The driver's part: the shard file (atomically), then its rows in one transaction."""
    tensors = {f"{r.plan.model_id}/{k}": v for r in results for k, v in r.state_dict.items()}
    path = out / SHARDS / shard.name
    atomic_save_tensors(tensors, path, metadata={"zoo_seed": str(seed)})
    digest = file_sha256(path)
    rows = [
        (
            r.plan.model_id,
            r.plan.task_id,
            json.dumps(r.plan.task.sides),
            r.plan.arch.to_json(),
            json.dumps(r.plan.settings()),
            r.plan.seed,
            r.retrains,
            r.train_acc,
            r.test_acc,
            shard.name,
            tensors_sha256(r.state_dict),
            None if math.isnan(r.val_acc) else r.val_acc,
        )
        for r in results
    ]
    with conn:  # one transaction: the shard exists once its rows are committed
        conn.execute("DELETE FROM models WHERE shard = ?", (shard.name,))
        conn.execute(
            "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?)",
            (shard.name, digest, len(results), seconds),
        )
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT OR REPLACE INTO models ({MODEL_COLUMNS}) VALUES ({marks})", rows)


def _first_difference(stored: list[tuple[int, str]], tasks) -> str:
    planned = [(i, t.name) for i, t in enumerate(tasks)]
    for (i, old), (_, new) in zip(stored, planned, strict=False):
        if old != new:
            return f"task {i} is {old!r} there, {new!r} now"
    return f"{len(stored)} tasks there, {len(planned)} now"


def _write_meta(conn, out: Path, meta: dict, tasks) -> None:
    try:
        existing = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
        raise ParamsimError(f"{out / REGISTRY} is not a registry of ours ({exc})") from exc
    if existing:
        if existing.get("format") != FORMAT:
            raise ParamsimError(
                f"{out} holds a zoo of store format {existing.get('format')!r}, written by "
                f"another paramsim version (this one writes {FORMAT}); use another --out"
            )
        built = existing.get("precision", "float32")  # zoos from before the option: float32
        if built != meta["precision"]:
            raise ParamsimError(
                f"{out} was built with --precision {built}, not {meta['precision']}; resume it "
                f"with --precision {built} or use another --out"
            )
        keys = ("recipe_settings", "dataset", "seed", "planned_models")
        differ = [k for k in keys if existing.get(k) != meta[k]]
        if differ:
            if differ[0] == "recipe_settings":  # name the recipe setting that differs
                old, new = existing.get("recipe_settings"), meta["recipe_settings"]
                old = old if isinstance(old, dict) else {}
                names = [k for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
                what = ", ".join(f"{k} {old.get(k)!r} there, {new.get(k)!r} now" for k in names[:2])
            else:
                what = f"{differ[0]} {existing.get(differ[0])!r} there, {meta[differ[0]]!r} now"
            raise ParamsimError(
                f"{out} holds a zoo built with other settings ({what}); resume it with its "
                "own settings, or use another --out"
            )
        # equal settings can still draw other tasks (a recipe of drawn group tasks, read by
        # another paramsim version): resuming would file new models under the old task names
        stored = [(i, name) for i, name, _ in conn.execute("SELECT * FROM tasks ORDER BY 1")]
        if stored != [(i, t.name) for i, t in enumerate(tasks)]:
            raise ParamsimError(
                f"{out} holds a zoo of other tasks than this recipe plans now (its first "
                f"differing task: {_first_difference(stored, tasks)}); use another --out"
            )
        return
    with conn:
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
        )
        conn.executemany(
            "INSERT INTO tasks VALUES (?, ?, ?)",
            [(i, t.name, json.dumps(t.sides)) for i, t in enumerate(tasks)],
        )


def _progress(total: int, enabled: bool, recipe: Recipe, steps: bool = True):
    from tqdm.auto import tqdm

    # disable=None: tqdm draws only on a terminal, so logs and pipes stay clean
    return tqdm(
        total=total,
        disable=None if enabled else True,
        desc=f"zoo {recipe.name}",
        unit="step" if steps else "shard",
    )

"""The zoo store: one directory per zoo, safetensors shards plus an SQLite registry.

    DIR/registry.sqlite        meta, tasks, shards and one row per model
    DIR/shards/shard-NNNNN.safetensors   tensors keyed "<model id>/<state_dict key>"

A shard file is written to a temporary name and renamed; its registry rows are committed
after the rename in one transaction. A shard without committed rows, or whose file does not
match its recorded sha256, does not exist as far as resumed builds are concerned: they
train it again from the same seeds, which gives the same tensors.

The registry is read as untrusted input: every row is checked for types and ranges, a
shard must be a plain file name inside `shards/`, and an architecture's claimed shapes are
compared with the stored tensors before anything is built from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from paramsim.atomic import OutputKind, atomic_path
from paramsim.data import Dataset, Task, load_dataset
from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec
from paramsim.zoo.recipes import MAX_MODEL_VALUES

REGISTRY = "registry.sqlite"
SHARDS = "shards"
FORMAT = 2  # 2: models.val_acc, accuracy of model selection on held-out training rows
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, name TEXT NOT NULL, sides TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, n_models INTEGER NOT NULL, seconds REAL);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    output_classes TEXT NOT NULL,   -- JSON: classes each output unit stands for
    arch TEXT NOT NULL,             -- JSON ArchSpec
    settings TEXT NOT NULL,         -- JSON: every training setting and the seed
    seed INTEGER NOT NULL,
    retrains INTEGER NOT NULL,
    train_acc REAL NOT NULL,        -- on the rows the model could train on
    test_acc REAL NOT NULL,
    shard TEXT NOT NULL REFERENCES shards(name),
    sha256 TEXT NOT NULL,
    val_acc REAL);                  -- on held-out training rows; NULL when none were held out
"""
# Where learned methods cache what they build from a zoo (LPS's auxiliary group-task zoo).
AUXILIARY = "auxiliary"
# What a zoo directory holds, so that `zoo build --out` recognises one and refuses the rest.
_SHARD_FILES = OutputKind("zoo shards", (), ("shard-*.safetensors",))
_ZOO_FILES = (REGISTRY, f"{REGISTRY}-*")
# an auxiliary zoo (`paramsim.lps.auxiliary`) is a zoo of its own, with its build lock beside it
_AUX_ZOOS = OutputKind(
    "auxiliary zoos",
    (),
    ("*.lock",),
    subdirs=(
        ("*", OutputKind("a zoo", (REGISTRY,), _ZOO_FILES, subdirs=((SHARDS, _SHARD_FILES),))),
    ),
)
ZOO_OUTPUT = OutputKind(
    "a zoo", (REGISTRY,), _ZOO_FILES, subdirs=((SHARDS, _SHARD_FILES), (AUXILIARY, _AUX_ZOOS))
)
# what `zoo build` may resume: it only adds shard files, so a file of the user's inside
# shards/ stays where it is (a command that would delete a zoo checks ZOO_OUTPUT)
ZOO_TO_RESUME = OutputKind("a zoo", (REGISTRY,), _ZOO_FILES, opaque=(SHARDS, AUXILIARY))
MODEL_COLUMNS = (
    "id, task_id, output_classes, arch, settings, seed, retrains, train_acc, test_acc, shard, "
    "sha256, val_acc"
)
# A shard is a plain file name: no directory part, no leading dot, nothing to escape with.
SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,100}\.safetensors")
# What atomic_path leaves behind for a shard when the process is killed mid-write.
STALE_TEMP = re.compile(r"\.shard-[0-9]+\.safetensors\.[A-Za-z0-9_]+\.tmp")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Checksum over keys, dtypes, shapes and bytes, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata=None) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def shard_path(directory: Path, name) -> Path:
    """`directory/shards/name`, refused unless `name` is a plain shard file name.

    A registry row is untrusted: an absolute path, `..`, a subdirectory or a symlink that
    leads out of `shards/` must never be read.
    """
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise ParamsimError(
            f"{directory / REGISTRY} names shard {str(name)[:80]!r}, not a plain file name "
            f"inside {SHARDS}/; the registry was edited or damaged: rebuild the zoo"
        )
    folder = directory / SHARDS
    path = folder / name
    if path.is_symlink() and path.resolve().parent != folder.resolve():
        raise ParamsimError(f"shard {path} is a link to a file outside {folder}; refusing it")
    return path


def remove_stale_temps(folder: Path) -> list[str]:
    """Delete the temporary shard files a killed build left; returns their names.

    Only regular files named as `atomic_path` names a shard's temporary file are touched.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for entry in os.scandir(folder):
        if STALE_TEMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed


@dataclass(frozen=True)
class ModelRecord:
    id: int
    task_id: int
    task: Task
    arch: ArchSpec
    settings: dict
    retrains: int
    train_acc: float
    test_acc: float
    shard: str
    sha256: str
    val_acc: float | None = None  # on held-out training rows, the basis of model selection

    @property
    def output_classes(self) -> tuple[tuple[int, ...], ...]:
        return self.task.sides


_TABLES = frozenset({"meta", "tasks", "shards", "models"})


def connect(directory: Path) -> sqlite3.Connection:
    """The registry for writing, its tables created if new. An existing database is written
    only when its tables are ours: another program's file of that name is left as it was."""
    path = directory / REGISTRY
    try:
        conn = sqlite3.connect(path)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables = {t for t in tables if not t.startswith("sqlite_")}  # sqlite's own (ANALYZE)
        if tables and not (tables <= _TABLES and "meta" in tables):
            conn.close()
            shown = ", ".join(sorted(tables - _TABLES)[:3]) or "no meta table"
            raise ParamsimError(
                f"{path} is another program's database ({shown}), not a zoo registry; "
                "use another --out"
            )
        conn.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise ParamsimError(f"{path} is not a registry of ours ({exc}); use another --out") from exc
    return conn


def open_zoo(directory: str | Path) -> Zoo:
    """The one way every command and library function opens a zoo: a missing path, a file,
    or a directory without a registry is a one-line ParamsimError that says how to build one."""
    path = Path(directory)
    if not path.exists():
        raise ParamsimError(
            f"{path} is not a zoo: it does not exist; build one with `paramsim zoo build`"
        )
    if not path.is_dir():
        raise ParamsimError(f"{path} is not a zoo: it is a file; give the zoo's directory")
    return Zoo(path)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_acc(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1


def parse_sides(text) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A task's sides from registry JSON: two non-empty, disjoint lists of class numbers."""
    sides = json.loads(text) if isinstance(text, str) else None
    ok = isinstance(sides, list) and len(sides) == 2
    ok = ok and all(
        isinstance(s, list) and s and all(_is_int(c) and c >= 0 for c in s) for s in sides
    )
    if not ok or set(sides[0]) & set(sides[1]):
        raise ValueError(f"task sides {str(text)[:60]!r} are not two disjoint lists of classes")
    return tuple(sides[0]), tuple(sides[1])


def parse_arch(text) -> ArchSpec:
    """An architecture from registry JSON, refused if larger than any recipe can build.

    ArchSpec checks its own fields and general bounds; a zoo model is also binary and
    within the recipe limit, so an edited row cannot make a reader allocate much.
    """
    if not isinstance(text, str):
        raise ValueError("arch is not JSON text")
    arch = ArchSpec.from_json(text)
    if arch.n_outputs != 2 or arch.n_params > MAX_MODEL_VALUES:
        raise ValueError(f"arch {arch.label} is beyond what a recipe builds")
    return arch


class Zoo:
    """Read access to a built zoo."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory)
        if not (self.path / REGISTRY).is_file():
            raise ParamsimError(
                f"{self.path} is not a zoo (no {REGISTRY}); build one with "
                f"`paramsim zoo build digits-pairs --out {self.path}`"
            )
        if (self.path / SHARDS).exists() and not (self.path / SHARDS).is_dir():
            raise ParamsimError(f"{self.path / SHARDS} is not a directory; this zoo is damaged")
        self._shard_cache: dict[str, dict[str, torch.Tensor]] = {}  # the last shard read

    @classmethod
    def open(cls, directory: str | Path) -> Zoo:
        """Same as `open_zoo(directory)`."""
        return open_zoo(directory)

    def _query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        try:
            uri = (self.path / REGISTRY).resolve().as_uri() + "?mode=ro"
            with sqlite3.connect(uri, uri=True) as conn:
                return conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ParamsimError(
                f"{self.path / REGISTRY} is not a readable registry: {exc}"
            ) from exc

    def _damaged(self, what: str, exc: Exception) -> ParamsimError:
        return ParamsimError(
            f"{self.path / REGISTRY}: {what} is malformed ({str(exc)[:200]}); the registry was "
            "edited or damaged: rebuild the zoo into a new --out"
        )

    @cached_property
    def meta(self) -> dict:
        meta = {}
        for key, value in self._query("SELECT key, value FROM meta"):
            try:
                meta[str(key)] = json.loads(value)
            except (TypeError, ValueError, RecursionError) as exc:
                raise self._damaged(f"meta value {str(key)[:40]!r}", exc) from None
        return meta

    @cached_property
    def tasks(self) -> list[Task]:
        tasks = []
        for i, (tid, sides) in enumerate(self._query("SELECT id, sides FROM tasks ORDER BY id")):
            try:
                if tid != i:
                    raise ValueError(f"task ids are not 0..n-1 (found {tid!r} at {i})")
                tasks.append(Task(parse_sides(sides)))
            except (TypeError, ValueError, RecursionError) as exc:
                raise self._damaged(f"task row {i}", exc) from None
        return tasks

    @cached_property
    def records(self) -> list[ModelRecord]:
        columns = {row[1] for row in self._query("PRAGMA table_info(models)")}
        val = "val_acc" if "val_acc" in columns else "NULL"  # zoos of store format 1
        rows = self._query(
            "SELECT id, task_id, arch, settings, retrains, train_acc, test_acc, shard, sha256, "
            f"{val} FROM models ORDER BY id"
        )
        return [self._record(n, row) for n, row in enumerate(rows)]

    def _record(self, n: int, row: tuple) -> ModelRecord:
        mid, task_id, arch, settings, retrains, train, test, shard, digest, val = row
        try:
            if not _is_int(mid) or not _is_int(task_id) or not 0 <= task_id < len(self.tasks):
                raise ValueError(f"id {mid!r} or task id {task_id!r} is not a valid number")
            if not _is_int(retrains) or retrains < 0:
                raise ValueError(f"retrains {retrains!r} is not a count")
            if not all(_is_acc(a) for a in (train, test)) or not (val is None or _is_acc(val)):
                raise ValueError("an accuracy is not a number in [0, 1]")
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError("sha256 is not 64 hex digits")
            if not isinstance(shard, str):
                raise ValueError("shard is not a name")
            settings = json.loads(settings) if isinstance(settings, str) else None
            if not isinstance(settings, dict):
                raise ValueError("settings are not a JSON object")
            spec = parse_arch(arch)
        except (TypeError, ValueError, OverflowError, RecursionError, ParamsimError) as exc:
            raise self._damaged(f"model row {n} (id {str(mid)[:20]})", exc) from None
        shard_path(self.path, shard)  # refuses names that lead outside shards/
        return ModelRecord(
            mid, task_id, self.tasks[task_id], spec, settings, retrains, float(train),
            float(test), shard, digest, None if val is None else float(val),
        )  # fmt: skip

    @property
    def task_ids(self) -> np.ndarray:
        return np.array([r.task_id for r in self.records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def dataset(self, data_dir: str | Path | None = None) -> Dataset:
        """The data set the zoo was trained on, read again from where it was (or `data_dir`);
        images of another size than the models read are refused (files replaced since)."""
        name = self.meta.get("dataset")
        if not isinstance(name, str):
            raise self._damaged("meta value 'dataset'", ValueError(f"{name!r} is not a name"))
        ds = load_dataset(name, data_dir or self.meta.get("data_dir"))
        shapes = set()  # from the distinct architectures: a million rows need not be parsed
        for (text,) in self._query("SELECT DISTINCT arch FROM models"):
            try:
                shapes.add(tuple(parse_arch(text).input_shape))
            except (TypeError, ValueError, ParamsimError) as exc:
                raise self._damaged("an arch row", exc) from None
        if shapes and tuple(ds.input_shape) not in shapes:
            raise ParamsimError(
                f"the data set {name} now holds images of shape {tuple(ds.input_shape)}, but the "
                f"models of {self.path} read {sorted(shapes)[0]}: its files were replaced since "
                "the build; give the original data (--data-dir) or rebuild the zoo"
            )
        return ds

    @cached_property
    def _by_id(self) -> dict[int, ModelRecord]:
        return {r.id: r for r in self.records}

    def record(self, model_id: int) -> ModelRecord:
        rec = self._by_id.get(int(model_id))
        if rec is None:
            raise ParamsimError(
                f"{self.path} has no model {model_id} ({len(self)} models"
                + ("" if self.summary_complete else "; the build is incomplete: rerun it")
                + ")"
            )
        return rec

    @property
    def summary_complete(self) -> bool:
        return len(self) == self.meta.get("planned_models")

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._shard_cache:
            self._shard_cache.clear()  # hold one shard at a time, whatever the zoo's size
            path = shard_path(self.path, name)
            redo = "rebuild with `paramsim zoo build` into the same --out to redo it"
            if not path.is_file():  # missing, or a FIFO or device that would block a read
                raise ParamsimError(f"shard {path} is missing or not a regular file; {redo}")
            try:
                self._shard_cache[name] = load_file(path)
            except (OSError, SafetensorError) as exc:
                raise ParamsimError(f"shard {path} is unreadable ({exc}); {redo}") from exc
        return self._shard_cache[name]

    def state_dict(self, model_id: int) -> dict[str, torch.Tensor]:
        """The model's tensors, checked against the registry's arch and sha256.

        The arch's shapes are compared with the stored tensors before anything is built
        from the arch, so an edited registry cannot make a reader allocate a huge module.
        """
        rec = self.record(model_id)
        prefix = f"{model_id}/"
        shard = self._shard(rec.shard)
        sd = {k[len(prefix) :]: v for k, v in shard.items() if k.startswith(prefix)}
        stored = {k: tuple(v.shape) for k, v in sd.items()}
        if stored != rec.arch.param_shapes():
            raise ParamsimError(
                f"model {model_id}: the registry's arch ({rec.arch.label}) does not match the "
                f"tensors stored in shard {rec.shard}; the registry or shard was edited or "
                "damaged: rebuild the zoo"
            )
        if tensors_sha256(sd) != rec.sha256:
            raise ParamsimError(
                f"checksum mismatch for model {model_id} in shard {rec.shard}: the file was "
                "changed or damaged; rerun `paramsim zoo build` into the same --out to redo it"
            )
        return sd

    def module(self, model_id: int) -> nn.Module:
        """The documented nn.Module of this model, weights loaded, in eval mode."""
        sd = self.state_dict(model_id)  # checks the arch against the tensors first
        module = self.record(model_id).arch.build()
        module.load_state_dict(sd)
        return module.eval()

    def network(self, model_id: int):
        from paramsim.weights import from_state_dict

        return from_state_dict(self.state_dict(model_id), self.record(model_id).arch)

    def networks(self, ids: Iterable[int] | None = None) -> list:
        """Canonical networks in the order of `ids` (all models by default).

        Models are read shard by shard, so each shard file is loaded once.
        """
        ids = [r.id for r in self.records] if ids is None else [int(i) for i in ids]
        out: dict[int, object] = {}
        for i in sorted(set(ids), key=lambda i: (self.record(i).shard, i)):
            out[i] = self.network(i)
        return [out[i] for i in ids]

    def verify(self) -> list[str]:
        """Names of shards whose file is missing, not a regular file or fails its sha256."""
        bad = []
        for name, digest in self._query("SELECT name, sha256 FROM shards ORDER BY name"):
            path = shard_path(self.path, name)
            if not path.is_file() or file_sha256(path) != digest:
                bad.append(name)
        return bad

    def summary(self) -> dict:
        test = np.array([r.test_acc for r in self.records])
        train = np.array([r.train_acc for r in self.records])
        val = np.array([r.val_acc for r in self.records if r.val_acc is not None])
        archs: dict[str, int] = {}
        for r in self.records:
            archs[r.arch.label] = archs.get(r.arch.label, 0) + 1

        def spread(a: np.ndarray) -> dict:
            if not len(a):
                return {}
            q = np.quantile(a, [0, 0.05, 0.5, 1])
            return {"min": q[0], "p5": q[1], "median": q[2], "max": q[3], "mean": a.mean()}

        return {
            "path": str(self.path),
            "recipe": self.meta.get("recipe"),
            "dataset": self.meta.get("dataset"),
            "seed": self.meta.get("seed"),
            # how the models were trained: "float32", or "bf16" autocast (float32 weights)
            "precision": self.meta.get("precision", "float32"),
            "tasks": len(self.tasks),
            "models": len(self),
            "complete": self.summary_complete,
            "architectures": archs,
            "retrained_models": int(sum(r.retrains > 0 for r in self.records)),
            "train_acc": {k: round(float(v), 4) for k, v in spread(train).items()},
            "val_acc": {k: round(float(v), 4) for k, v in spread(val).items()},
            "test_acc": {k: round(float(v), 4) for k, v in spread(test).items()},
        }

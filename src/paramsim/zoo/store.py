"""The zoo store: one directory per zoo, safetensors shards plus an SQLite registry.

    DIR/registry.sqlite        meta, tasks, shards and one row per model
    DIR/shards/shard-NNNNN.safetensors   tensors keyed "<model id>/<state_dict key>"

A shard file is written to a temporary name and renamed; its registry rows are committed
after the rename in one transaction. A shard without committed rows does not exist as far
as readers and resumed builds are concerned, so a killed build simply redoes it.
"""

from __future__ import annotations

import hashlib
import json
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

from paramsim.atomic import atomic_path
from paramsim.data import Dataset, Task, load_dataset
from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec

REGISTRY = "registry.sqlite"
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
    train_acc REAL NOT NULL,
    test_acc REAL NOT NULL,
    shard TEXT NOT NULL REFERENCES shards(name),
    sha256 TEXT NOT NULL);
"""


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

    @property
    def output_classes(self) -> tuple[tuple[int, ...], ...]:
        return self.task.sides


def connect(directory: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(directory / REGISTRY)
    conn.executescript(SCHEMA)
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


class Zoo:
    """Read access to a built zoo."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory)
        if not (self.path / REGISTRY).is_file():
            raise ParamsimError(
                f"{self.path} is not a zoo (no {REGISTRY}); build one with "
                f"`paramsim zoo build digits-pairs --out {self.path}`"
            )
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

    @cached_property
    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self._query("SELECT key, value FROM meta")}

    @cached_property
    def tasks(self) -> list[Task]:
        rows = self._query("SELECT id, sides FROM tasks ORDER BY id")
        return [Task(tuple(tuple(s) for s in json.loads(sides))) for _, sides in rows]

    @cached_property
    def records(self) -> list[ModelRecord]:
        rows = self._query(
            "SELECT id, task_id, arch, settings, retrains, train_acc, test_acc, shard, sha256 "
            "FROM models ORDER BY id"
        )
        return [
            ModelRecord(
                r[0], r[1], self.tasks[r[1]], ArchSpec.from_json(r[2]), json.loads(r[3]), *r[4:]
            )
            for r in rows
        ]

    @property
    def task_ids(self) -> np.ndarray:
        return np.array([r.task_id for r in self.records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)

    def dataset(self, data_dir: str | Path | None = None) -> Dataset:
        return load_dataset(self.meta["dataset"], data_dir or self.meta.get("data_dir"))

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
            path = self.path / "shards" / name
            try:
                self._shard_cache[name] = load_file(path)
            except (OSError, SafetensorError) as exc:
                raise ParamsimError(
                    f"shard {path} is missing or unreadable ({exc}); rebuild with "
                    "`paramsim zoo build` into the same --out to redo it"
                ) from exc
        return self._shard_cache[name]

    def state_dict(self, model_id: int) -> dict[str, torch.Tensor]:
        """The model's tensors, checked against the registry's sha256."""
        rec = self.record(model_id)
        prefix = f"{model_id}/"
        shard = self._shard(rec.shard)
        sd = {k[len(prefix) :]: v for k, v in shard.items() if k.startswith(prefix)}
        if tensors_sha256(sd) != rec.sha256:
            raise ParamsimError(
                f"checksum mismatch for model {model_id} in shard {rec.shard}: the file was "
                "changed or damaged; delete it and rerun `paramsim zoo build` to redo it"
            )
        return sd

    def module(self, model_id: int) -> nn.Module:
        """The documented nn.Module of this model, weights loaded, in eval mode."""
        module = self.record(model_id).arch.build()
        module.load_state_dict(self.state_dict(model_id))
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
        """Names of shards whose file checksum does not match the registry."""
        bad = []
        for name, digest in self._query("SELECT name, sha256 FROM shards ORDER BY name"):
            path = self.path / "shards" / name
            if not path.is_file() or file_sha256(path) != digest:
                bad.append(name)
        return bad

    def summary(self) -> dict:
        test = np.array([r.test_acc for r in self.records])
        train = np.array([r.train_acc for r in self.records])
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
            "tasks": len(self.tasks),
            "models": len(self),
            "complete": self.summary_complete,
            "architectures": archs,
            "retrained_models": int(sum(r.retrains > 0 for r in self.records)),
            "test_acc": {k: round(float(v), 4) for k, v in spread(test).items()},
            "train_acc": {k: round(float(v), 4) for k, v in spread(train).items()},
        }

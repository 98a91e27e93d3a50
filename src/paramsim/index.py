"""A search index over model embeddings: exhaustive inner product on L2-normalised vectors,
so scores are cosine similarities; ids and task names travel with it.

Storage "flat" (faiss IndexFlatIP) is exact; "fp16" (IndexScalarQuantizer, fp16) is still
exhaustive but reads half the memory per query (scores within ~1e-3), which is what a scan
over a million stored models is bound by."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paramsim.errors import ParamsimError
from paramsim.vectors import unit_rows

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
INDEX_FORMAT_VERSION = 1


def model_checksum(model_dir: str | Path) -> str:
    """sha256 of a saved LPS model's weights file: the index's embeddings are only meaningful
    for the exact weights that produced them, so the index records this and search checks it."""
    from paramsim.lps.fit import WEIGHTS_FILE
    from paramsim.zoo.store import file_sha256

    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ParamsimError(
            f"{model_dir} is not a saved LPS model (no {WEIGHTS_FILE}); pass the --model the "
            "index was built with"
        )
    return file_sha256(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ParamsimError(f"embeddings must be a 2-d array (n, dim), got shape {x.shape}")
    return unit_rows(x)


class EmbeddingIndex:
    """Add embeddings with integer ids (and optional task names); search by cosine."""

    def __init__(self, dim: int, meta: dict | None = None, storage: str = "flat") -> None:
        import faiss

        self.dim = int(dim)
        if storage == "flat":
            self._index = faiss.IndexFlatIP(self.dim)
        elif storage == "fp16":
            self._index = faiss.IndexScalarQuantizer(
                self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
        else:
            raise ParamsimError(f"unknown index storage {storage!r}; use flat or fp16")
        self.storage = storage
        self.ids = np.zeros(0, dtype=np.int64)
        self.tasks: list[str] = []
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(
        self, emb: np.ndarray, ids: Sequence[int] | None = None, tasks: Sequence[str] | None = None
    ) -> None:
        x = _unit(emb)
        if x.shape[1] != self.dim:
            raise ParamsimError(f"embeddings have {x.shape[1]} dims; the index holds {self.dim}")
        ids_a = (
            np.arange(len(self), len(self) + len(x), dtype=np.int64)
            if ids is None
            else np.asarray(ids, dtype=np.int64)
        )
        if len(ids_a) != len(x):
            raise ParamsimError(f"{len(x)} embeddings but {len(ids_a)} ids")
        names = list(tasks) if tasks is not None else [""] * len(x)
        if len(names) != len(x):
            raise ParamsimError(f"{len(x)} embeddings but {len(names)} task names")
        self._index.add(x)
        self.ids = np.concatenate([self.ids, ids_a])
        self.tasks += [str(t) for t in names]

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; cosine scores; -1 pads missing."""
        q = _unit(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise ParamsimError(f"queries have {q.shape[1]} dims; the index holds {self.dim}")
        if not len(self):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = max(1, min(int(k), len(self)))
        scores, pos = self._index.search(q, k)
        ids = np.where(pos >= 0, self.ids[np.clip(pos, 0, None)], -1)
        return scores, ids

    def check_model(self, model_dir: str | Path) -> None:
        """Refuse an LPS model whose weights are not the ones this index was built with."""
        want = self.meta.get("model_sha256")
        if not want:
            raise ParamsimError(
                "this index records no LPS model checksum; rebuild it with `paramsim index build`"
            )
        if model_checksum(model_dir) != want:
            raise ParamsimError(
                f"the LPS model in {model_dir} is not the one this index was built with "
                "(weights checksum differs); rebuild the index with that --model"
            )

    def task_of(self, model_id: int) -> str:
        where = np.flatnonzero(self.ids == model_id)
        return self.tasks[int(where[0])] if len(where) else ""

    def save(self, directory: str | Path) -> Path:
        """Write the faiss index and a JSON of ids, task names and metadata; the directory is
        replaced atomically, so a reader never sees half an index."""
        import faiss

        d = Path(directory)
        if d.exists() and not _replaceable(d):
            raise ParamsimError(
                f"{d} exists and is not a paramsim index; choose another output directory"
            )
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}."))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual mode
            faiss.write_index(self._index, str(tmp / INDEX_FILE))
            doc = {
                "format": "paramsim-index",
                "format_version": INDEX_FORMAT_VERSION,
                "dim": self.dim,
                "storage": self.storage,
                "ids": self.ids.tolist(),
                "tasks": self.tasks,
                "meta": self.meta,
            }
            (tmp / META_FILE).write_text(json.dumps(doc))
            if d.exists():
                old = d.with_name(f".{d.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(d, old)
                os.replace(tmp, d)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, d)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return d

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingIndex:
        import faiss

        d = Path(directory)
        if not (d / INDEX_FILE).is_file() or not (d / META_FILE).is_file():
            raise ParamsimError(
                f"{d} is not a paramsim index; build one with `paramsim index build ZOO`"
            )
        try:
            doc = json.loads((d / META_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ParamsimError(f"cannot read {d / META_FILE} ({exc}); rebuild the index") from exc
        if not isinstance(doc, dict) or doc.get("format") != "paramsim-index":
            raise ParamsimError(f"{d / META_FILE} is not a paramsim index file; rebuild it")
        if doc.get("format_version") != INDEX_FORMAT_VERSION:
            raise ParamsimError(
                f"{d} has index format version {doc.get('format_version')}; this paramsim "
                f"reads {INDEX_FORMAT_VERSION}; rebuild it with `paramsim index build`"
            )
        try:
            out = cls(doc["dim"], doc.get("meta"), doc.get("storage", "flat"))
            out._index = faiss.read_index(str(d / INDEX_FILE))  # faiss format, never pickle
            out.ids = np.asarray(doc["ids"], dtype=np.int64)
            out.tasks = list(doc["tasks"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ParamsimError(f"{d} is damaged ({exc}); rebuild the index") from exc
        if len(out.ids) != len(out) or len(out.tasks) != len(out) or out._index.d != out.dim:
            raise ParamsimError(f"{d} is inconsistent (ids vs vectors); rebuild the index")
        return out


def _replaceable(d: Path) -> bool:
    """True for an empty directory or one holding nothing but a paramsim index: replacing it
    loses nothing of the user's."""
    if not d.is_dir() or d.is_symlink():
        return False
    return {p.name for p in d.iterdir()} <= {INDEX_FILE, META_FILE}

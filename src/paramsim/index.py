"""A search index over model embeddings: inner product on L2-normalised vectors, so scores
are cosine similarities; ids and per-model metadata (task, architecture, accuracy, where the
model came from) travel with it, so searches can be filtered.

Kinds (see docs/SCALING.md for measured recall and speed at a million models):

* ``exact``: faiss IndexFlatIP, an exhaustive scan; storage ``fp16`` (IndexScalarQuantizer)
  keeps it exhaustive but reads half the memory per query (scores within ~1e-3).
* ``hnsw``: a navigable small-world graph (Malkov & Yashunin 2018), IndexHNSWFlat; query cost
  grows with ``ef_search``, not with the number of models.
* ``ivf``: an inverted file (k-means cells, IndexIVFFlat); a query scans ``nprobe`` cells,
  or with ``exact=True`` every cell that could hold one of the true top k
  (`paramsim.index_bounded`): the flat scan's answer, reading a fraction of the vectors on
  clustered data.

Filters (task, architecture, minimum accuracy) become a faiss ID selector passed through the
search parameters. A filter that keeps few models is scored exactly on the kept vectors
instead: a graph or cell search through a sparse filter misses neighbours.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paramsim.errors import ParamsimError
from paramsim.index_check import check_faiss_file, check_items_file, file_digest
from paramsim.vectors import unit_rows

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
ITEMS_FILE = "items.npz"
INDEX_FORMAT_VERSION = 2
KINDS = ("exact", "hnsw", "ivf")
DEFAULT_PARAMS = {
    "exact": {},
    "hnsw": {"m": 32, "ef_construction": 80, "ef_search": 64},
    "ivf": {"nlist": 0, "nprobe": 16},  # nlist 0: about 4 sqrt(n), fixed at the first add
}
# a filtered search that keeps at most this many models scores them exactly (a few ms)
EXACT_SUBSET = 20_000
_OWN_FILES = {INDEX_FILE, META_FILE, ITEMS_FILE}
# the largest embedding width an index may declare (LPS emb_dim tops out at 4096)
MAX_DIM = 1 << 16
# above this many ivf cells k-means runs in two levels (sqrt(nlist) cells, then each split):
# one level costs samples x nlist, hours at a million models and 16,000 cells
TWO_LEVEL_CELLS = 4096


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


def _unit(x: np.ndarray) -> np.ndarray:
    """float32 (n, dim) rows scaled to unit length (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ParamsimError(f"embeddings must be a 2-d array (n, dim), got shape {x.shape}")
    return unit_rows(x)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Vocab:
    """Strings stored once, referred to by int32 codes (a million models share a few tasks)."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = [str(n) for n in names]
        self._code = {n: i for i, n in enumerate(self.names)}

    def encode(self, values: Sequence[str]) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int32)
        for i, v in enumerate(values):
            v = str(v)
            code = self._code.get(v)
            if code is None:
                code = self._code[v] = len(self.names)
                self.names.append(v)
            out[i] = code
        return out


class EmbeddingIndex:
    """Add embeddings with integer ids and metadata; search by cosine, optionally filtered."""

    def __init__(
        self,
        dim: int,
        meta: dict | None = None,
        storage: str = "flat",
        kind: str = "exact",
        params: dict | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ParamsimError(f"unknown index kind {kind!r}; use {', '.join(KINDS)}")
        if storage not in ("flat", "fp16"):
            raise ParamsimError(f"unknown index storage {storage!r}; use flat or fp16")
        if storage == "fp16" and kind != "exact":
            raise ParamsimError("fp16 storage is for the exact index only; drop --fp16")
        unknown = set(params or {}) - set(DEFAULT_PARAMS[kind])
        if unknown:
            raise ParamsimError(f"unknown {kind} index settings {sorted(unknown)}")
        self.dim = int(dim)
        if self.dim < 1:
            raise ParamsimError(f"an index needs at least one dimension, got {dim}")
        self.kind = kind
        self.storage = storage
        self.params = {**DEFAULT_PARAMS[kind], **(params or {})}
        for key, value in self.params.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
                raise ParamsimError(f"index setting {key} must be a whole number from 0 to 2^31-1")
        self.meta = dict(meta or {})
        self._index = None if kind == "ivf" else self._new_index(0)
        self.ids = np.zeros(0, dtype=np.int64)
        self._task = np.zeros(0, dtype=np.int32)
        self._arch = np.zeros(0, dtype=np.int32)
        self._source = np.zeros(0, dtype=np.int32)
        self.acc = np.zeros(0, dtype=np.float32)
        self.local_ids = np.zeros(0, dtype=np.int64)
        self._tasks, self._archs, self._sources = _Vocab(), _Vocab(), _Vocab()
        self._cones = None  # ivf: each cell's cone for exact search, made on first use
        self.exact_read_share: float | None = None  # of the vectors, by the last exact search

    # ------------------------------------------------------------------ building
    def _new_index(self, n: int):
        import faiss

        p = self.params
        if self.kind == "exact":
            if self.storage == "fp16":
                return faiss.IndexScalarQuantizer(
                    self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
                )
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, max(p["m"], 2), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(p["ef_construction"], 1)
            index.hnsw.efSearch = max(p["ef_search"], 1)
            return index
        nlist = p["nlist"] or int(round(4 * np.sqrt(max(n, 1))))
        nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))  # faiss wants 39 points a cell
        p["nlist"] = nlist
        index = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = 1234
        index.cp.min_points_per_centroid = 1  # tiny indexes: one cell, no faiss warning
        index.nprobe = max(1, min(p["nprobe"], nlist))
        return index

    def _train(self, sample: np.ndarray) -> None:
        nlist = self.params.get("nlist", 0)
        if self.kind != "ivf" or nlist <= TWO_LEVEL_CELLS:
            self._index.train(sample)
            return
        from paramsim.index_train import two_level_centroids

        centroids = two_level_centroids(sample, nlist)
        self._index.quantizer.add(centroids)
        self._index.is_trained = True  # a flat IVF's training is its quantizer's centroids

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def add(
        self,
        emb: np.ndarray,
        ids: Sequence[int] | None = None,
        tasks: Sequence[str] | None = None,
        archs: Sequence[str] | None = None,
        accs: Sequence[float] | None = None,
        sources: Sequence[str] | None = None,
        local_ids: Sequence[int] | None = None,
    ) -> None:
        """Add vectors; metadata lists, when given, have one entry per vector (unknown task
        or architecture: "", unknown accuracy: NaN). An IVF index trains on its first add."""
        x = _unit(emb)
        n = len(x)
        if x.shape[1] != self.dim:
            raise ParamsimError(f"embeddings have {x.shape[1]} dims; the index holds {self.dim}")
        ids_a = (
            np.arange(len(self), len(self) + n, dtype=np.int64)
            if ids is None
            else np.asarray(ids, dtype=np.int64).reshape(-1)
        )

        def column(values, default, name):
            out = [default] * n if values is None else list(values)
            if len(out) != n:
                raise ParamsimError(f"{n} embeddings but {len(out)} {name}")
            return out

        if len(ids_a) != n:
            raise ParamsimError(f"{n} embeddings but {len(ids_a)} ids")
        task_c = self._tasks.encode(column(tasks, "", "task names"))
        arch_c = self._archs.encode(column(archs, "", "architectures"))
        acc_a = np.asarray(column(accs, np.nan, "accuracies"), dtype=np.float32)
        src_c = self._sources.encode(column(sources, "", "sources"))
        local_a = np.asarray(column(local_ids, -1, "local ids"), dtype=np.int64)
        all_ids = np.concatenate([self.ids, ids_a])
        if len(np.unique(all_ids)) != len(all_ids):
            raise ParamsimError("model ids must be unique within an index")
        if n and (self._index is None or not self._index.is_trained):
            self._index = self._new_index(n)
            sample = x
            cap = 64 * self.params["nlist"]  # k-means needs no more than this
            if n > cap:
                pick = np.random.default_rng(0).choice(n, cap, replace=False)
                sample = x[np.sort(pick)]
            self._train(sample)
        if n:
            self._index.add(x)
            self._cones = None
        self.ids = all_ids
        self._task = np.concatenate([self._task, task_c])
        self._arch = np.concatenate([self._arch, arch_c])
        self.acc = np.concatenate([self.acc, acc_a])
        self._source = np.concatenate([self._source, src_c])
        self.local_ids = np.concatenate([self.local_ids, local_a])

    # ------------------------------------------------------------------ metadata
    @property
    def tasks(self) -> list[str]:
        return [self._tasks.names[c] for c in self._task]

    def _position(self, model_id: int) -> int | None:
        where = np.flatnonzero(self.ids == model_id)
        return int(where[0]) if len(where) else None

    def task_of(self, model_id: int) -> str:
        pos = self._position(model_id)
        return "" if pos is None else self._tasks.names[self._task[pos]]

    def arch_of(self, model_id: int) -> str:
        pos = self._position(model_id)
        return "" if pos is None else self._archs.names[self._arch[pos]]

    def ref_of(self, model_id: int) -> str:
        """Where the model came from: `ZOO:ID` for a zoo model, the file for a checkpoint."""
        pos = self._position(model_id)
        if pos is None:
            return ""
        source, local = self._sources.names[self._source[pos]], int(self.local_ids[pos])
        return f"{source}:{local}" if source and local >= 0 else source

    @property
    def n_sources(self) -> int:
        return len(set(self._source.tolist()))

    def select(
        self,
        tasks: Sequence[str] = (),
        archs: Sequence[str] = (),
        min_acc: float | None = None,
    ) -> np.ndarray | None:
        """Positions of the models passing every filter (None when nothing filters).

        `archs` entries match a full label ("mlp 64-32-32-2") or a kind ("mlp", "cnn"); a
        model of unknown accuracy never passes `min_acc`. Names that match no stored model
        are errors, so a typo is not an empty result."""
        if not tasks and not archs and min_acc is None:
            return None
        keep = np.ones(len(self.ids), dtype=bool)
        if tasks:
            from paramsim.data.tasks import canonical_name

            # "1 vs 0" is the task "0 vs 1": match every stored name of it, either side order
            stored = [canonical_name(n) if n else "" for n in self._tasks.names]
            codes = []
            for t in tasks:
                want = canonical_name(str(t))
                hit = [i for i, n in enumerate(stored) if n and n == want]
                if not hit:
                    known = ", ".join(repr(n) for n in sorted(self._tasks.names)[:8] if n)
                    raise ParamsimError(
                        f"no stored model has task {t!r}; tasks look like {known or '(none)'}"
                    )
                codes += hit
            keep &= np.isin(self._task, np.asarray(codes, dtype=np.int32))
        if archs:
            codes = []
            for a in archs:
                hit = [
                    i
                    for i, n in enumerate(self._archs.names)
                    if n and (n == a or n.split()[0] == a)
                ]
                if not hit:
                    known = ", ".join(repr(n) for n in sorted(self._archs.names)[:8] if n)
                    raise ParamsimError(
                        f"no stored model has architecture {a!r}; stored: {known or '(none)'}"
                    )
                codes += hit
            keep &= np.isin(self._arch, np.asarray(codes, dtype=np.int32))
        if min_acc is not None:
            with np.errstate(invalid="ignore"):
                keep &= self.acc >= np.float32(min_acc)
        return np.flatnonzero(keep).astype(np.int64)

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        tasks: Sequence[str] = (),
        archs: Sequence[str] = (),
        min_acc: float | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; cosine scores; -1 pads missing.

        `ef_search` (hnsw) and `nprobe` (ivf) trade speed for recall per call; the stored
        settings apply otherwise. `exact` asks an ivf index for the exhaustive answer (its
        cells bound what they hold, so most are skipped; `nprobe` is then the first round's
        width); an exact index is exact already, an hnsw index cannot be."""
        if exact and self.kind == "hnsw":
            raise ParamsimError(
                "an hnsw index cannot search exactly; drop --exact, or build the index with "
                "--kind ivf or --kind exact"
            )
        self.exact_read_share = None  # set below only by a bounded ivf search
        q = _unit(np.atleast_2d(queries))
        if q.shape[1] != self.dim:
            raise ParamsimError(f"queries have {q.shape[1]} dims; the index holds {self.dim}")
        keep = self.select(tasks, archs, min_acc)
        n_avail = len(self) if keep is None else len(keep)
        if not n_avail:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = max(1, min(int(k), n_avail))
        if keep is not None and len(keep) <= EXACT_SUBSET:
            scores, pos = self._exact_subset(q, keep, k)
        elif exact and self.kind == "ivf":
            scores, pos, _, read = self.bounded_search(q, k, keep, first=nprobe)
            self.exact_read_share = float(read.mean()) / max(len(self), 1) if len(q) else 0.0
        else:
            params = self._params(keep, ef_search, nprobe, k)
            # faiss.contrib.torch_utils (imported by pytorch-metric-learning) replaces
            # `search` with a version without `params` and keeps the original as search_numpy.
            search = getattr(self._index, "search_numpy", self._index.search)
            scores, pos = search(q, k, params=params)
        ids = np.where(pos >= 0, self.ids[np.clip(pos, 0, None)], -1)
        return scores, ids

    def bounded_search(
        self, q: np.ndarray, k: int, keep: np.ndarray | None = None, first: int | None = None
    ):
        """ivf: the exact top k of unit queries over the kept positions, (scores, positions,
        cells scanned and vectors in them per query); see `paramsim.index_bounded`."""
        from paramsim.index_bounded import bounded_search, cell_cones

        if self._cones is None:
            self._cones = cell_cones(self._index)
        selector = None if keep is None else self._selector(keep)
        return bounded_search(
            self._index, self._cones, q, k, first=first or self.params["nprobe"], selector=selector
        )

    def _exact_subset(self, q: np.ndarray, keep: np.ndarray, k: int):
        """Exhaustive scores over the kept positions only (reconstructed vectors)."""
        if self.kind == "ivf":
            self._index.make_direct_map()  # once; lets reconstruct find a vector's cell
        scores = np.empty((len(q), k), np.float32)
        pos = np.empty((len(q), k), np.int64)
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_p = np.zeros((len(q), 0), np.int64)
        for start in range(0, len(keep), EXACT_SUBSET):  # bounded memory for large subsets
            part = keep[start : start + EXACT_SUBSET]
            s = q @ self._index.reconstruct_batch(part).T
            best_s = np.concatenate([best_s, s], axis=1)
            best_p = np.concatenate([best_p, np.broadcast_to(part, s.shape)], axis=1)
            if best_s.shape[1] > k:
                top = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                best_s = np.take_along_axis(best_s, top, axis=1)
                best_p = np.take_along_axis(best_p, top, axis=1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        scores[:] = np.take_along_axis(best_s, order, axis=1)[:, :k]
        pos[:] = np.take_along_axis(best_p, order, axis=1)[:, :k]
        return scores, pos

    def _params(self, keep: np.ndarray | None, ef_search: int | None, nprobe: int | None, k):
        """faiss search parameters: the stored (or given) effort, and a selector for filters.

        Through a filter that keeps a fraction f of the models, a graph or cell search finds
        about f times as many candidates, so the effort is scaled by 1/f (at most 16x)."""
        import faiss

        boost = 1.0 if keep is None else min(16.0, len(self) / max(len(keep), 1))
        sel = None if keep is None else self._selector(keep)
        if self.kind == "hnsw":
            ef = ef_search or self.params["ef_search"]
            params = faiss.SearchParametersHNSW(efSearch=max(int(ef * boost), k))
        elif self.kind == "ivf":
            nlist = self.params["nlist"]
            probe = min(nlist, max(1, int((nprobe or self.params["nprobe"]) * boost)))
            params = faiss.SearchParametersIVF(nprobe=probe)
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
            params._keep_alive = sel  # the selector must outlive the search call
        return params

    def _selector(self, keep: np.ndarray):
        """A hash-set selector for sparse filters, a bitmap for dense ones."""
        import faiss

        if len(keep) * 32 < len(self):
            return faiss.IDSelectorBatch(keep)
        bits = np.zeros(len(self), dtype=bool)
        bits[keep] = True
        packed = np.packbits(bits, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(packed))
        sel._bits = packed  # keep the buffer alive as long as the selector
        return sel

    # ------------------------------------------------------------------ checks
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

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        """Write the faiss index, a JSON of settings and names, and the per-model arrays; the
        directory is replaced atomically, so a reader never sees half an index, and only an
        empty directory or an index of ours is ever replaced."""
        import faiss

        d = Path(directory)
        check_output(d)
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}."))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual mode
            index = self._index if self._index is not None else self._new_index(0)
            faiss.write_index(index, str(tmp / INDEX_FILE))
            doc = {
                "format": "paramsim-index",
                "format_version": INDEX_FORMAT_VERSION,
                "dim": self.dim,
                "kind": self.kind,
                "storage": self.storage,
                "params": self.params,
                "n": len(self.ids),
                "tasks": self._tasks.names,
                "archs": self._archs.names,
                "sources": self._sources.names,
                "meta": self.meta,
                # let load check the faiss file before faiss allocates from its contents
                "index_bytes": (tmp / INDEX_FILE).stat().st_size,
                "index_sha256": file_digest(tmp / INDEX_FILE),
            }
            (tmp / META_FILE).write_text(json.dumps(doc))
            with open(tmp / ITEMS_FILE, "wb") as f:
                np.savez(
                    f,
                    ids=self.ids,
                    task=self._task,
                    arch=self._arch,
                    acc=self.acc,
                    source=self._source,
                    local=self.local_ids,
                )
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
        if not all((d / name).is_file() for name in _OWN_FILES):
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
        dim = doc.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= MAX_DIM:
            raise ParamsimError(
                f"{d / META_FILE} declares {dim!r} dims, not a whole number from 1 to {MAX_DIM}; "
                "rebuild the index"
            )
        try:
            if doc.get("storage", "flat") == "fp16" and doc.get("kind") != "exact":
                raise ValueError(f"{META_FILE} pairs fp16 storage with kind {doc.get('kind')!r}")
            try:
                out = cls(
                    dim, doc.get("meta"), doc.get("storage", "flat"), doc["kind"], doc["params"]
                )
            except ParamsimError as exc:
                raise ValueError(f"{META_FILE}: {exc}") from None
            n = doc["n"]
            if not isinstance(n, int) or isinstance(n, bool):
                raise ValueError(f"n is {n!r}, not a count")
            keys = ("ids", "task", "arch", "acc", "source", "local")
            check_items_file(d / ITEMS_FILE, keys, n)  # the headers before numpy allocates
            with np.load(d / ITEMS_FILE, allow_pickle=False) as items:
                arrays = {k: items[k] for k in keys}
            if any(a.ndim != 1 or len(a) != n for a in arrays.values()):
                raise ValueError("per-model arrays disagree in length")
            out.ids = arrays["ids"].astype(np.int64)
            out.acc = arrays["acc"].astype(np.float32)
            out.local_ids = arrays["local"].astype(np.int64)
            for attr, key, vocab in (
                ("_task", "task", "tasks"),
                ("_arch", "arch", "archs"),
                ("_source", "source", "sources"),
            ):
                names = doc[vocab]
                if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
                    raise ValueError(f"{vocab} is not a list of names")
                codes = arrays[key].astype(np.int32)
                if n and (codes.min() < 0 or codes.max() >= len(names)):
                    raise ValueError(f"{key} codes out of range")
                setattr(out, attr, codes)
                setattr(out, f"_{vocab}", _Vocab(names))
            n_vectors = n  # what the faiss file must hold
        except (KeyError, TypeError, ValueError, OSError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if isinstance(exc, KeyError):
                why = f"{META_FILE} lacks the field {why}"
            raise ParamsimError(f"{d} is damaged ({why}); rebuild the index") from exc
        digest, size = doc.get("index_sha256"), doc.get("index_bytes")
        if not (digest is None or isinstance(digest, str)) or not (
            size is None or (isinstance(size, int) and not isinstance(size, bool))
        ):
            raise ParamsimError(f"{d / META_FILE} has a malformed index checksum; rebuild it")
        # older indexes record no size or digest: the structure check still bounds every length
        try:
            check_faiss_file(
                d / INDEX_FILE,
                kind=out.kind,
                storage=out.storage,
                dim=out.dim,
                n=n_vectors,
                sha256=digest,
                size=size,
            )
            out._index = faiss.read_index(str(d / INDEX_FILE))  # faiss's own format, never pickle
        except (RuntimeError, OSError) as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ParamsimError(f"{d} is damaged ({why}); rebuild the index") from exc
        if out.kind == "ivf":
            cells = int(out._index.nlist)
            if out.params["nlist"] != cells:
                raise ParamsimError(
                    f"{d} is inconsistent: {META_FILE} declares {out.params['nlist']} ivf cells, "
                    f"{INDEX_FILE} holds {cells}; rebuild the index"
                )
        ntotal, dims = int(out._index.ntotal), int(out._index.d)
        if ntotal != n_vectors or dims != out.dim or len(out.ids) != ntotal:
            raise ParamsimError(
                f"{d} is inconsistent: {INDEX_FILE} holds {ntotal} vectors of {dims} dims, "
                f"{META_FILE} declares {n_vectors} of {out.dim} and {ITEMS_FILE} {len(out.ids)} "
                "ids; rebuild the index"
            )
        return out


def check_output(directory: str | Path) -> None:
    """Refuse an output directory that exists and is not an index of ours (call it before
    the work, so a refusal costs nothing)."""
    d = Path(directory)
    if d.exists() and not _replaceable(d):
        raise ParamsimError(
            f"{d} exists and is not a paramsim index; choose another output directory"
        )


def _replaceable(d: Path) -> bool:
    """True for an empty directory or one holding nothing but a paramsim index: replacing it
    loses nothing of the user's."""
    if not d.is_dir() or d.is_symlink():
        return False
    return {p.name for p in d.iterdir()} <= _OWN_FILES


def build_index(
    items: Sequence,
    emb: np.ndarray,
    archs: Sequence[str],
    *,
    kind: str = "exact",
    storage: str = "flat",
    meta: dict | None = None,
    params: dict | None = None,
) -> EmbeddingIndex:
    """An index over bulk-embedded models (`paramsim.embed_bulk.Item`s, in order).

    Ids are the zoo's model ids when every model comes from one zoo (what `search` prints
    and `ZOO:ID` names), otherwise positions 0..n-1; `ref_of` says where each came from."""
    one_zoo = len({it.source for it in items}) == 1 and all(it.local_id >= 0 for it in items)
    ids = [it.local_id for it in items] if one_zoo else None
    idx = EmbeddingIndex(emb.shape[1], meta, storage=storage, kind=kind, params=params)
    idx.add(
        emb,
        ids,
        tasks=[it.task for it in items],
        archs=archs,
        accs=[it.acc for it in items],
        sources=[it.source for it in items],
        local_ids=[it.local_id for it in items],
    )
    return idx

"""Embedding many models at once: zoos, `ZOO:ID` references, checkpoint files and directory
trees of them, in chunks, in this process or on Ray workers.

The driver lists the models (cheap: registry rows and file names), cuts the list into
chunks and hands them to an executor together with the LPS model, which Ray ships to the
workers once. Each worker reads its chunk's models itself (every node must see the zoos and
files at the same paths) and returns their embeddings. The driver alone writes: each
finished chunk lands atomically as a part file in `.OUT.parts/` beside the output, the parts
are merged in chunk order, checked to hold every model exactly once, and removed after the
output is written. A rerun with the same models and LPS weights reuses the finished parts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paramsim.atomic import atomic_path, atomic_write
from paramsim.errors import ParamsimError
from paramsim.stamps import files_stamp

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
SIDECAR_MAX_BYTES = 1 << 20
MANIFEST = "manifest.json"
_PART = re.compile(r"^part-\d{6}\.npz$")


@dataclass(frozen=True)
class Item:
    """One model to embed: a zoo's model (`local_id` >= 0) or a checkpoint file (-1)."""

    source: str
    local_id: int = -1
    task: str = ""
    arch: str = ""
    acc: float = math.nan

    @property
    def ref(self) -> str:
        return f"{self.source}:{self.local_id}" if self.local_id >= 0 else self.source


def _is_zoo(path: Path) -> bool:
    from paramsim.use.models import is_zoo

    return is_zoo(path)


def _zoo_items(path: Path, ids: Sequence[int] | None = None) -> list[Item]:
    from paramsim.zoo import open_zoo

    zoo = open_zoo(path)
    src = str(path.resolve())
    records = zoo.records if ids is None else [zoo.record(i) for i in ids]
    return [Item(src, r.id, r.task.name, r.arch.label, float(r.test_acc)) for r in records]


def _sidecar(path: Path) -> dict:
    """The `FILE.json` that `paramsim zoo export` writes beside a checkpoint: its task,
    architecture and accuracy annotate the model. Anything unreadable there is ignored (it
    only labels the model; the checkpoint itself is what gets embedded)."""
    side = path.with_name(path.name + ".json")
    try:
        if not side.is_file() or side.stat().st_size > SIDECAR_MAX_BYTES:
            return {}
        doc = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _file_item(path: Path) -> Item:
    from paramsim.weights import ArchSpec

    doc = _sidecar(path)
    arch = ""
    if isinstance(doc.get("arch"), dict):
        try:
            arch = ArchSpec.from_json(doc["arch"]).label
        except (ParamsimError, TypeError, ValueError):
            arch = ""
    acc = doc.get("test_acc")
    acc = float(acc) if isinstance(acc, int | float) and not isinstance(acc, bool) else math.nan
    task = doc.get("task") if isinstance(doc.get("task"), str) else ""
    return Item(str(path.resolve()), -1, task, arch, acc)


def _walk(root: Path) -> list[Item]:
    """Zoos and checkpoint files under `root`, in sorted path order; a zoo is not entered,
    hidden names (temporary files of atomic writes) are skipped, and so are symlinked
    directories other than zoos, with a note on stderr."""
    found: list[tuple[tuple[str, ...], list[Item]]] = []  # (path below root, its models)
    links: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        zoos = [d for d in dirnames if not d.startswith(".") and _is_zoo(here / d)]
        links += [
            here / d
            for d in dirnames
            if d not in zoos and not d.startswith(".") and (here / d).is_symlink()
        ]
        for d in zoos:
            found.append(((here / d).relative_to(root).parts, _zoo_items(here / d)))
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in zoos]
        for f in filenames:
            p = here / f
            if not f.startswith(".") and f.endswith(CHECKPOINT_SUFFIXES) and p.is_file():
                found.append((p.relative_to(root).parts, [_file_item(p)]))
    # os.walk gives a directory's files before its subdirectories' (c.pt before a/x.pt):
    # sort the whole list, component by component, so the order is the documented one
    found.sort(key=lambda entry: entry[0])
    if links:  # said, not silently dropped: a link may lead anywhere, even back up the tree
        shown = ", ".join(str(p) for p in links[:3]) + (", ..." if len(links) > 3 else "")
        print(
            f"note: {len(links)} symbolic link(s) to folders under {root} not followed ({shown});"
            " name them directly to include them",
            file=sys.stderr,
        )
    return [it for _, items in found for it in items]


def collect_items(sources: Sequence[str]) -> list[Item]:
    """Every model named by `sources`, in order: a zoo directory (all its models), `ZOO:ID`,
    a checkpoint file, or a directory searched for zoos and checkpoint files."""
    items: list[Item] = []
    for s in sources:
        path = Path(s)
        head, _, tail = str(s).rpartition(":")
        if _is_zoo(path):
            items += _zoo_items(path)
        elif head and tail.isdigit() and _is_zoo(Path(head)):
            items += _zoo_items(Path(head), [int(tail)])
        elif path.is_file():
            if not path.name.endswith(CHECKPOINT_SUFFIXES):
                raise ParamsimError(
                    f"{s} is not a zoo, ZOO:ID or checkpoint file "
                    f"({', '.join(CHECKPOINT_SUFFIXES)})"
                )
            items.append(_file_item(path))
        elif path.is_dir():
            found = _walk(path)
            if not found:
                raise ParamsimError(
                    f"{s} holds no zoo and no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})"
                )
            items += found
        else:
            raise ParamsimError(
                f"{s} is neither a zoo directory, ZOO:ID, a checkpoint file nor a directory"
            )
    if not items:
        raise ParamsimError("no models given")
    return items


def network_label(net) -> str:
    """An architecture label in ArchSpec's words ("mlp 64-32-32-2") for a loaded network."""
    c, h, w = net.input_shape
    first = c * h * w if net.kind == "mlp" else c
    return f"{net.kind} " + "-".join(str(n) for n in (first, *(lay.units for lay in net.layers)))


def load_items(items: Sequence[Item]) -> list:
    """The networks of `items`, in order; each zoo opened once, each shard read once."""
    from paramsim.weights import ArchSpec, load
    from paramsim.zoo import open_zoo

    nets: list = [None] * len(items)
    by_zoo: dict[str, list[int]] = {}
    for pos, it in enumerate(items):
        if it.local_id >= 0:
            by_zoo.setdefault(it.source, []).append(pos)
        else:
            doc = _sidecar(Path(it.source))
            spec = None
            if isinstance(doc.get("arch"), dict):
                try:
                    spec = ArchSpec.from_json(doc["arch"])
                except (ParamsimError, TypeError, ValueError):
                    spec = None
            nets[pos] = load(it.source, spec)
    for source, positions in by_zoo.items():
        zoo = open_zoo(source)
        for pos, net in zip(
            positions, zoo.networks([items[p].local_id for p in positions]), strict=True
        ):
            nets[pos] = net
    return nets


def embed_chunk(lps, items: Sequence[Item], device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """What a worker does with one chunk: read the models, embed them (on `device`), and
    label their architectures (from the registry or sidecar, else from the loaded network)."""
    nets = load_items(items)
    emb = np.asarray(lps.embed(nets, device=device), dtype=np.float32)
    return emb, [it.arch or network_label(n) for it, n in zip(items, nets, strict=True)]


def items_digest(items: Sequence[Item], model_sha256: str, chunk_size: int) -> str:
    """What a part file's content depends on: the model list, the files they are read from
    (a checkpoint's size and modification time; a zoo's files_stamp), the LPS weights and the
    chunking. A checkpoint replaced between an interrupted run and its rerun is embedded
    again, not served from an old part."""
    h = hashlib.sha256(f"{model_sha256}|{chunk_size}|".encode())
    stamps: dict[str, tuple] = {}
    for it in items:
        if it.source not in stamps:
            stamps[it.source] = _source_stamp(Path(it.source), it.local_id >= 0)
        h.update(f"{it.ref}|{stamps[it.source]}\n".encode())
    return h.hexdigest()


def _source_stamp(path: Path, is_zoo: bool) -> tuple:
    """A checkpoint's size and mtime; a zoo's registry and shards only (an auxiliary zoo or
    an output written inside the zoo directory does not change its models)."""
    if is_zoo:
        from paramsim.zoo.store import REGISTRY, SHARDS

        return (_source_stamp(path / REGISTRY, False), files_stamp(path / SHARDS))
    try:
        st = path.stat()
    except OSError:
        return ()  # the read that follows says why
    return (st.st_size, st.st_mtime_ns)


class Parts:
    """The part files of one bulk embedding, in `.NAME.parts/` beside the output."""

    def __init__(self, out: str | Path, digest: str, n_chunks: int) -> None:
        out = Path(out)
        self.dir = out.with_name(f".{out.name}.parts")
        self.digest = digest
        self.n_chunks = n_chunks

    def path(self, chunk: int) -> Path:
        return self.dir / f"part-{chunk:06d}.npz"

    def _ours(self) -> bool:
        return self.dir.is_dir() and all(
            p.name == MANIFEST or _PART.match(p.name) or p.name.endswith(".tmp")
            for p in self.dir.iterdir()
        )

    def open(self) -> set[int]:
        """Chunks already finished by an earlier run with the same digest; parts of another
        run are cleared (only files of ours: a directory holding anything else is refused)."""
        if self.dir.exists() and not self._ours():
            raise ParamsimError(
                f"{self.dir} exists and holds files that are not embedding parts; move it away"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / MANIFEST
        try:
            same = json.loads(manifest.read_text()).get("digest") == self.digest
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            self.clear(keep_dir=True)
            atomic_write(manifest, json.dumps({"digest": self.digest}))
        return {c for c in range(self.n_chunks) if self.path(c).is_file()}

    def write(self, chunk: int, emb: np.ndarray, archs: Sequence[str]) -> None:
        with atomic_path(self.path(chunk)) as tmp, open(tmp, "wb") as f:
            np.savez(f, emb=emb, arch=np.asarray(archs, dtype=str))

    def read(self, chunk: int, rows: int) -> tuple[np.ndarray, list[str]] | None:
        """A finished part, or None when it is damaged or of the wrong length (redo it)."""
        try:
            with np.load(self.path(chunk), allow_pickle=False) as z:
                emb, archs = z["emb"], z["arch"]
        except (OSError, ValueError, KeyError):
            return None
        if emb.ndim != 2 or len(emb) != rows or len(archs) != rows:
            return None
        return emb, [str(a) for a in archs]

    def clear(self, keep_dir: bool = False) -> None:
        if not self._ours():
            return
        for p in self.dir.iterdir():
            p.unlink()
        if not keep_dir:
            self.dir.rmdir()


def embed_items(
    items: Sequence[Item],
    lps,
    *,
    executor=None,
    chunk_size: int = 1024,
    parts: Parts | None = None,
    on_chunk: Callable[[int], None] | None = None,
    chunk_fn: Callable = embed_chunk,
) -> tuple[np.ndarray, list[str]]:
    """Embeddings (n, dim) and architecture labels of `items`, in order.

    Chunks run on `executor` (default: this process); with `parts`, each finished chunk is
    written as a part at once, and parts from an earlier run of the same job are reused.
    `chunk_fn(lps, items)` is the worker's job (replaceable in tests)."""
    from paramsim.executors import LocalExecutor

    if chunk_size < 1:
        raise ParamsimError(f"--chunk-size must be at least 1, got {chunk_size}")
    chunks = [tuple(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
    results: dict[int, tuple[np.ndarray, list[str]]] = {}
    if parts is not None:
        for c in parts.open():
            got = parts.read(c, len(chunks[c]))
            if got is not None:
                results[c] = got
                if on_chunk:
                    on_chunk(c)
    todo = [c for c in range(len(chunks)) if c not in results]
    ex = executor or LocalExecutor()
    for pos, (emb, archs) in ex.map(chunk_fn, lps, [chunks[c] for c in todo]):
        c = todo[pos]
        if c in results:  # an executor must not hand back a chunk twice
            raise RuntimeError(f"chunk {c} came back twice")
        if len(emb) != len(chunks[c]) or len(archs) != len(chunks[c]):
            raise RuntimeError(f"chunk {c}: {len(emb)} embeddings for {len(chunks[c])} models")
        emb = np.asarray(emb, dtype=np.float32)
        if parts is not None:
            parts.write(c, emb, archs)
        results[c] = (emb, list(archs))
        if on_chunk:
            on_chunk(c)
    missing = [c for c in range(len(chunks)) if c not in results]
    if missing:
        raise RuntimeError(f"chunks {missing[:5]} never came back")
    if not chunks:
        return np.zeros((0, 0), np.float32), []
    emb = np.concatenate([results[c][0] for c in range(len(chunks))])
    archs = [a for c in range(len(chunks)) for a in results[c][1]]
    return emb, archs


def embed_sources(
    sources: Sequence[str],
    model_dir: str | Path,
    out: str | Path,
    *,
    executor: str = "local",
    address: str | None = None,
    chunk_size: int = 1024,
    threads: int | None = None,
    progress: bool = False,
    unique: bool = False,
    device: str = "cpu",
) -> tuple[list[Item], np.ndarray, list[str], Parts]:
    """The commands' bulk path: list the models of `sources` (each once with `unique`),
    embed them with the LPS model in `model_dir` on the named executor, with parts beside
    `out`. The caller writes its output, then calls `parts.clear()`. `device` is where the
    chunks are embedded (checked here for the local executor; Ray workers check their own)."""
    import functools

    from tqdm.auto import tqdm

    from paramsim.executors import make_executor
    from paramsim.index import model_checksum
    from paramsim.lps import LPS

    if executor == "local":
        from paramsim.devices import resolve_device

        resolve_device(device)
    items = collect_items(sources)
    if unique:
        seen: set[str] = set()
        items = [it for it in items if not (it.ref in seen or seen.add(it.ref))]
    lps = LPS.load(model_dir)
    digest = items_digest(items, model_checksum(model_dir), chunk_size)
    parts = Parts(out, digest, math.ceil(len(items) / chunk_size))
    bar = tqdm(total=parts.n_chunks, disable=None if progress else True, desc="embed", unit="chunk")
    with make_executor(executor, address, device=device, threads=threads) as ex:
        emb, archs = embed_items(
            items,
            lps,
            executor=ex,
            chunk_size=chunk_size,
            parts=parts,
            on_chunk=lambda _c: bar.update(1),
            chunk_fn=functools.partial(embed_chunk, device=device),
        )
    bar.close()
    return items, emb, archs, parts

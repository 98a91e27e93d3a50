"""Never a half-written or lost output: write to a temporary file (or directory) beside the
target, then rename; never replace a directory that paramsim did not write."""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from paramsim.errors import ParamsimError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it replaces `path`.

    On any failure the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Replace `path` with `data` in one step."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- output directories


@dataclass(frozen=True)
class OutputKind:
    """What one command writes into its --out directory, so that an existing one is known.

    A directory is an earlier output of this kind when one of `markers` exists in it (or,
    with `nested`, in one of its sub-directories) and every entry is ours: a file matching
    `entries` (glob patterns), a sub-directory named by `subdirs` whose own entries are all
    ours by that kind, or, with `nested`, a sub-directory holding one output of this kind
    (a marker and `entries` files only). Anything else may be a user's data, which is never
    replaced; a sub-directory is looked into, not trusted by its name.
    """

    what: str  # for messages: "an LPS model", "an eval report"
    markers: tuple[str, ...]
    entries: tuple[str, ...]
    nested: bool = False  # sub-directories holding a marker are ours too (relate, per method)
    subdirs: tuple[tuple[str, OutputKind], ...] = ()  # (glob pattern, what it holds)
    # names taken as ours without looking inside: only for a check before a run that adds
    # to the output and never deletes from it (a zoo build resuming)
    opaque: tuple[str, ...] = ()

    def _marked(self, directory: Path) -> bool:
        return any((directory / m).is_file() for m in self.markers)

    def _entry_is_ours(self, entry: Path) -> bool:
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp") and not entry.is_dir():
            return True  # an atomic write's leftover from a killed run
        if any(fnmatch.fnmatchcase(name, pat) for pat in self.opaque):
            return True  # a resume adds to it, link or not (shards/ linked to a bigger disk)
        if entry.is_symlink():
            return False  # followed, it could lead anywhere
        if entry.is_dir():
            inner = self._inside(entry)
            return inner is not None and inner.only_ours(entry)
        return any(fnmatch.fnmatchcase(name, pat) for pat in self.entries)

    def _inside(self, directory: Path) -> OutputKind | None:
        """What a sub-directory of ours holds, by its name (`subdirs`), or with `nested` one
        output of this kind (unmarked while a killed run was writing it, but never empty:
        an empty folder of the user's is not ours to remove); None when it is not ours."""
        for pattern, kind in self.subdirs:
            if fnmatch.fnmatchcase(directory.name, pattern):
                return kind
        if self.nested and any(directory.iterdir()):
            return OutputKind(self.what, self.markers, self.entries)
        return None

    def only_ours(self, directory: Path) -> bool:
        """Every entry of `directory` is one this kind writes (an empty one counts)."""
        return all(self._entry_is_ours(e) for e in directory.iterdir())

    def foreign(self, directory: Path) -> Path | None:
        """The first entry under `directory`, looking into our sub-directories, that this
        kind does not write; None when there is none (for messages)."""
        for e in sorted(directory.iterdir()):
            if self._entry_is_ours(e):
                continue
            inner = self._inside(e) if e.is_dir() and not e.is_symlink() else None
            return (inner.foreign(e) if inner else None) or e
        return None

    def holds(self, directory: Path) -> bool:
        """True when `directory` looks like an earlier output of this kind."""
        entries = list(directory.iterdir())
        marked = self._marked(directory) or (
            self.nested and any(e.is_dir() and self._marked(e) for e in entries)
        )
        return marked and all(self._entry_is_ours(e) for e in entries)


def check_output_dir(
    path: str | Path, kind: OutputKind, overwrite: bool, resume: bool = False
) -> str:
    """Refuse an --out whose replacement could lose a user's data; say what is there.

    Returns "absent", "empty" or "ours" (an earlier output of `kind`, which needs
    `overwrite`, or `resume` for commands that continue an earlier run). A file, a symbolic
    link, or a non-empty directory that is not ours raises ParamsimError before any work.
    """
    p = Path(path)
    if p.is_symlink():
        raise ParamsimError(f"--out {p} is a symbolic link; give the real directory's path")
    if not p.exists():
        return "absent"
    if not p.is_dir():
        raise ParamsimError(f"--out {p} is a file, not a directory; choose another --out")
    here = Path.cwd().resolve()
    if p.resolve() == here or p.resolve() in here.parents:
        raise ParamsimError(f"--out {p} holds the working directory; choose a new directory")
    try:
        # what blocks comes first in the message: entries that are not this command's
        entries = sorted((kind._entry_is_ours(e), e.name) for e in p.iterdir())
        entries = [name for _, name in entries]
        ours = kind.holds(p)
        stranger = None if ours else kind.foreign(p)
    except OSError as exc:
        raise ParamsimError(
            f"cannot read --out {p} ({exc.strerror}); choose another --out"
        ) from exc
    if not entries:
        return "empty"
    if not ours:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        if stranger is not None and stranger.parent != p:
            shown = f"{stranger.relative_to(p)}, which paramsim does not write"
        raise ParamsimError(
            f"--out {p} exists and is not {kind.what} written by paramsim (it holds {shown}); "
            "choose a new directory"
        )
    if not (overwrite or resume):
        raise ParamsimError(f"--out {p} already holds {kind.what}; add --overwrite to replace it")
    return "ours"


def check_output_file(
    path: str | Path, what: str, magic: bytes | Callable[[bytes], bool], overwrite: bool
) -> None:
    """Refuse an --out file whose replacement could lose a user's data: a directory, a
    non-regular file, or a file that does not start with `magic` (or whose first 16 bytes
    `magic` rejects; so is not `what`); an earlier `what` is replaced only with `overwrite`."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_dir():
        raise ParamsimError(f"--out {p} is a directory; give a file name such as emb.npy")
    if p.is_symlink() or not p.is_file():
        raise ParamsimError(f"--out {p} is not a regular file; choose another --out")
    try:
        with open(p, "rb") as f:
            head = f.read(16 if callable(magic) else len(magic))
    except OSError as exc:
        raise ParamsimError(
            f"cannot read --out {p} ({exc.strerror}); choose another --out"
        ) from exc
    if not (magic(head) if callable(magic) else head == magic):
        raise ParamsimError(f"--out {p} exists and is not {what}; choose another file name")
    if not overwrite:
        raise ParamsimError(f"--out {p} already holds {what}; add --overwrite to replace it")


@contextlib.contextmanager
def _beside(target: Path) -> Iterator[Path]:
    """A fresh private directory next to `target` (same file system, so renames are atomic),
    locked while the run lasts so that `tidy_stale_work` leaves it alone."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        )
        fd = os.open(work, os.O_RDONLY)
    except OSError as exc:
        raise ParamsimError(
            f"cannot write beside --out {target} ({exc.strerror}); choose another --out"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield work
    finally:
        os.close(fd)


_OURS_INSIDE = (".replaced", ".failed")
STALE_AFTER_S = 60.0  # a work directory younger than this is never tidied


def tidy_stale_work(target: Path) -> None:
    """Tidy the work directories beside `target` that a killed run left (their lock is free):
    an earlier output it had moved aside is put back if nothing took its place, and what only
    we wrote is removed. Anything else found in one leaves it untouched."""
    if not target.parent.is_dir():
        return
    pattern = re.compile(re.escape(f".{target.name}.") + r"[A-Za-z0-9_]{8}\.partial")
    for work in target.parent.iterdir():
        if not pattern.fullmatch(work.name) or work.is_symlink() or not work.is_dir():
            continue
        try:
            fd = os.open(work, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a run is still going
            names = {e.name for e in work.iterdir()}
            moved = work / ".replaced"
            # a run locks its directory before it moves anything into it, so one holding
            # .replaced with a free lock is a dead run's, however young; without it, a young
            # directory may be a run's that has not locked it yet
            if ".replaced" not in names and time.time() - os.fstat(fd).st_mtime < STALE_AFTER_S:
                continue
            if not names <= {target.name, *_OURS_INSIDE}:
                continue  # something we did not write: leave it all
            if ".replaced" in names:
                if target.exists() or target.is_symlink():
                    print(
                        f"note: {moved} holds an earlier output of a killed run, kept because "
                        f"{target} exists; move it back by hand if you want it",
                        file=sys.stderr,
                    )
                    continue  # which one is good is not ours to guess
                os.replace(moved, target)
            shutil.rmtree(work, ignore_errors=True)
        except OSError:
            continue
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: OutputKind, overwrite: bool = False) -> Iterator[Path]:
    """Check `path` (see `check_output_dir`), then yield a fresh path beside it to write into.

    On success the new directory takes `path`'s place by renames and the earlier output of
    ours (if any) is removed; on failure everything written is removed and `path` is as it
    was. A directory we did not write is never removed: it was refused on entry.
    """
    target = Path(os.path.abspath(path))
    tidy_stale_work(target)  # first: it may put a killed run's earlier output back
    check_output_dir(target, kind, overwrite)
    with _beside(target) as work:
        yield from _swap_in(target, kind, overwrite, work)


def _swap_in(target: Path, kind: OutputKind, overwrite: bool, work: Path) -> Iterator[Path]:
    new = work / target.name
    try:
        yield new
        new.mkdir(exist_ok=True)
        os.chmod(new, 0o777 & ~_umask())  # the usual mode, not mkdtemp's 0700
        state = check_output_dir(target, kind, overwrite)  # again: it may have changed
        mode = None
        if state == "empty":  # the user's empty folder: ours takes its place and its mode
            mode = stat.S_IMODE(os.stat(target).st_mode)
            os.rmdir(target)  # fails, keeping it, if something appeared inside meanwhile
        elif state == "ours":
            os.replace(target, work / ".replaced")
        try:
            os.replace(new, target)
        except BaseException:
            if state == "ours":
                os.replace(work / ".replaced", target)
            raise
        if mode is not None:  # after the rename: a folder without write permission cannot move
            os.chmod(target, mode)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # made above: holds only what we wrote


@contextlib.contextmanager
def replace_in_place(path: str | Path, kind: OutputKind, overwrite: bool) -> Iterator[Path]:
    """Like `atomic_dir`, for outputs written at their final path (they record it, or resume
    there): an earlier output of ours is first moved aside, restored if the run fails, and
    removed once the new one is complete. Without `overwrite` an earlier output of ours is
    continued in place (the command reuses what it finds)."""
    target = Path(os.path.abspath(path))
    tidy_stale_work(target)
    state = check_output_dir(target, kind, overwrite, resume=True)
    if state != "ours" or not overwrite:
        yield target
        return
    with _beside(target) as work:
        yield from _aside(target, work)


def _aside(target: Path, work: Path) -> Iterator[Path]:
    os.replace(target, work / ".replaced")
    try:
        yield target
    except BaseException:
        if target.exists():  # the new, partial output: we created it
            os.replace(target, work / ".failed")
        os.replace(work / ".replaced", target)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

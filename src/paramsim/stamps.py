"""What changes when files on disk change, for per-process caches of what was read from them
(a data set, a zoo's models): a cache keyed by it reads again after a rebuild in place."""

from __future__ import annotations

from pathlib import Path


def files_stamp(directory: str | Path | None) -> tuple:
    """Names, sizes and modification times of the entries of `directory`; () when there is
    none or it cannot be listed (the read that follows says why)."""
    try:
        stats = [(e.name, e.stat()) for e in Path(directory).iterdir()] if directory else []
    except OSError:
        return ()
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats))

"""Helpers for the command-line tests: run `paramsim`, check its one error line, and snapshot a
directory tree to show that a refused command wrote and deleted nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

from paramsim.cli import main


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under `roots`: its kind, and for files their size and content digest."""
    out: dict[str, tuple] = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]):
            key = str(p)
            if p.is_symlink():
                out[key] = ("link", str(p.readlink()))
            elif p.is_dir():
                out[key] = ("dir",)
            else:
                out[key] = ("file", p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def run_cli(capsys, args: list[str]) -> tuple[int, str, str]:
    """main(args) -> (return code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error(code: int, err: str, *words: str) -> None:
    """Exit code 2 and exactly one stderr line, `error: ...`, holding each of `words`."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])

"""Each command that writes --out: a first run writes it, a rerun needs --overwrite, and the
replacement is whole (swapped in by renames, nothing left beside it)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error, run_cli

reproduce_module = importlib.import_module("paramsim.use.reproduce")  # the package exports
# a function of the same name


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _write_twice(capsys, tmp_path: Path, args: list, out: Path) -> None:
    """Run, refuse the rerun without --overwrite, rerun with it; nothing but `out` remains."""
    code, _, err = run_cli(capsys, [*args, "--out", out])
    assert code == 0, err
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run_cli(capsys, [*args, "--out", out])
    assert_one_error(code, err, "--overwrite")
    code, _, err = run_cli(capsys, [*args, "--out", out, "--overwrite"])
    assert code == 0, err
    assert _names(tmp_path) == [out.name]  # no temporary or replaced directory beside it
    assert set(first) <= set(_names(out))
    assert all(p.stat().st_mtime_ns != first.get(p.name) for p in out.iterdir())


def test_index_build(tiny_zoo, lps_model, tmp_path, capsys):
    out = tmp_path / "idx"
    _write_twice(capsys, tmp_path, ["index", "build", tiny_zoo, "--model", lps_model], out)
    assert _names(out) == ["index.faiss", "index.json", "items.npz"]
    assert json.loads((out / "index.json").read_text())["n"] == 9


def test_eval(tiny_zoo, tmp_path, capsys):
    args = ["eval", tiny_zoo, "--methods", "flat", "--splits", "1", "--quiet"]
    _write_twice(capsys, tmp_path, args, tmp_path / "ev")
    assert "results.json" in _names(tmp_path / "ev")


def test_relate_single_then_several_methods(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "rel"
    base = ["relate", tiny_zoo, "-q", "--out", out]
    assert run_cli(capsys, [*base, "--methods", "flat"])[0] == 0
    assert_one_error(*run_cli(capsys, [*base, "--methods", "flat"])[::2], "--overwrite")
    code, _, err = run_cli(capsys, [*base, "--methods", "flat,gram1", "--overwrite"])
    assert code == 0, err
    assert _names(out) == ["flat", "gram1"]  # the single-method files went with the old output
    code, _, err = run_cli(capsys, [*base, "--method", "flat", "--overwrite"])  # old spelling
    assert code == 0, err  # a per-method layout is recognised as ours too
    assert _names(out) == ["dendrogram.png", "map.png", "relation.json", "relation_matrix.png"]
    assert _names(tmp_path) == ["rel"]


def test_relate_keeps_a_users_file_inside_a_per_method_folder(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "rel"
    base = ["relate", tiny_zoo, "-q", "--out", out, "--overwrite"]
    assert run_cli(capsys, [*base, "--methods", "flat,gram1"])[0] == 0
    (out / "flat" / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, [*base, "--methods", "flat"])
    assert_one_error(code, err, "flat/notes.txt, which paramsim does not write")
    assert (out / "flat" / "notes.txt").read_text() == "mine"


def test_transfer(tiny_zoo, tmp_path, capsys):
    args = ["transfer", tiny_zoo, "--methods", "flat", "--shots", "1", "--repeats", "1"]
    args += ["--finetune-steps", "1", "--targets", "0-1", "-q"]
    _write_twice(capsys, tmp_path, args, tmp_path / "tr")
    assert "transfer.json" in _names(tmp_path / "tr")


def test_fit_with_the_old_variant_spelling(tiny_zoo, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["fit", tiny_zoo, "--variant", "lps-nofunc", "--epochs", "1", "-q", "--threads", "1"]
    _write_twice(capsys, tmp_path, args, out)
    doc = json.loads((out / "lps.json").read_text())
    assert doc["meta"]["method"] == "lps-nofunc" and doc["config"]["func_branch"] is False


def test_embed_file(tiny_zoo, lps_model, tmp_path, capsys):
    out = tmp_path / "e.npy"
    args = ["embed", f"{tiny_zoo}:0", "--model", lps_model, "--out", out]
    assert run_cli(capsys, args)[0] == 0
    before = out.read_bytes()
    assert_one_error(*run_cli(capsys, args)[::2], "--overwrite")
    assert out.read_bytes() == before
    args[1] = f"{tiny_zoo}:1"
    assert run_cli(capsys, [*args, "--overwrite"])[0] == 0
    assert out.read_bytes() != before and np.load(out).shape == (1, 32)  # two parts of 16
    assert _names(tmp_path) == ["e.npy"]


@pytest.fixture
def fake_reproduce(monkeypatch):
    """`reproduce` replaced by one that records what it found and writes README.md; it fails
    when the config's seed is 13."""
    seen: list[list[str]] = []

    def fake(out, zoo_dir, cfg, say):
        seen.append(_names(out))
        (out / "README.md").write_text(f"seed {cfg.seed}")
        if cfg.seed == 13:
            raise RuntimeError("stage failed")

    monkeypatch.setattr(reproduce_module, "reproduce", fake)
    return seen


def test_reproduce_continues_or_replaces_its_report(fake_reproduce, tmp_path, capsys):
    out = tmp_path / "report"
    base = ["reproduce", "--quick", "-q", "--out", out]
    assert run_cli(capsys, base)[0] == 0
    assert _names(out) == ["README.md", "reproduce.json"]
    assert run_cli(capsys, [*base, "--seed", "1"])[0] == 0  # continued: finds its own files
    assert fake_reproduce[-1] == ["README.md", "reproduce.json"]
    with pytest.raises(RuntimeError):  # a failed fresh start restores the earlier report
        run_cli(capsys, [*base, "--overwrite", "--seed", "13"])
    assert (out / "README.md").read_text() == "seed 1"
    assert run_cli(capsys, [*base, "--overwrite", "--seed", "2"])[0] == 0
    assert fake_reproduce[-1] == ["reproduce.json"]  # a fresh directory
    assert (out / "README.md").read_text() == "seed 2"
    assert json.loads((out / "reproduce.json").read_text())["seed"] == 2
    assert _names(tmp_path) == ["report"]


def test_reproduce_keeps_a_users_file_inside_a_stage_folder(fake_reproduce, tmp_path, capsys):
    out = tmp_path / "report"
    base = ["reproduce", "--quick", "-q", "--out", out]
    assert run_cli(capsys, base)[0] == 0
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")
    assert run_cli(capsys, [*base, "--overwrite"])[0] == 0  # a stage folder of ours goes
    (out / "eval").mkdir()
    (out / "eval" / "mynotes.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):  # neither continued nor replaced
        code, _, err = run_cli(capsys, [*base, *extra])
        assert_one_error(code, err, "eval/mynotes.txt")
    assert (out / "eval" / "mynotes.txt").read_text() == "precious"

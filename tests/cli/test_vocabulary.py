"""One option vocabulary across commands, contradictory flags refused, whole-zoo search."""

from __future__ import annotations

import shutil

import click
import pytest
from cli_helpers import assert_one_error, run_cli

import paramsim.zoo
from paramsim.cli import cli, main

COMPUTING = ["compare", "embed", "index build", "search", "eval", "fit", "relate", "transfer"]
LISTS = ["compare", "eval", "relate", "transfer"]  # commands that run several methods


def _command(path: str) -> click.Command:
    cmd: click.Command = cli
    for part in path.split():
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    return cmd


def _options(path: str) -> dict[str, click.Option]:
    return {
        name: p for p in _command(path).params if isinstance(p, click.Option) for name in p.opts
    }


@pytest.mark.parametrize("path", [*COMPUTING, "reproduce"])
def test_every_computing_command_takes_seed_threads_quiet(path):
    opts = _options(path)
    assert {"--seed", "--threads", "--quiet"} <= set(opts)
    assert opts["--seed"].type.min == 0 and opts["--threads"].type.min == 1


@pytest.mark.parametrize("path", LISTS)
def test_method_lists_are_spelt_methods(path):
    opts = _options(path)
    assert not opts["--methods"].hidden and opts["-m"] is opts["--methods"]
    if path != "eval":  # the old spelling still works, unlisted
        assert opts["--method"].hidden


@pytest.mark.parametrize("path", ["eval", "fit"])
def test_extra_zoo_is_repeatable(path):
    assert _options(path)["--extra-zoo"].multiple


@pytest.mark.parametrize("path", ["fit", "index build", "eval", "relate", "transfer", "embed"])
def test_every_writer_takes_overwrite(path):
    assert _options(path)["--overwrite"].is_flag


def test_no_library_code_left_in_the_cli():
    import paramsim.cli.compare_cmd as compare_cmd
    import paramsim.cli.lps_cmd as lps_cmd
    from paramsim.use import compare, models

    for name in ("resolve_models", "nearest_tasks", "compare_with_model"):
        assert not hasattr(lps_cmd, name)
    assert not hasattr(compare_cmd, "compare")
    assert callable(models.resolve_models) and callable(compare.compare_with_model)


def test_eval_passes_every_extra_zoo_to_the_protocol(tiny_zoo, tmp_path, monkeypatch):
    from paramsim.eval import on_zoo

    seen = {}

    def fake_evaluate_zoo(store, methods, **kw):
        seen["extra"] = kw["extra"]
        raise SystemExit(0)

    monkeypatch.setattr(on_zoo, "evaluate_zoo", fake_evaluate_zoo)
    copies = [tmp_path / "x1", tmp_path / "x2"]  # other zoos than ZOO (refused as extra)
    for c in copies:
        shutil.copytree(tiny_zoo, c)
    args = ["eval", str(tiny_zoo), "--methods", "lps", "--out", str(tmp_path / "o"), "-q"]
    with pytest.raises(SystemExit):
        main([*args, "--extra-zoo", str(copies[0]), "--extra-zoo", str(copies[1])])
    n = len(paramsim.zoo.open_zoo(tiny_zoo).records)
    assert len(seen["extra"]) == 2 * n


def test_compare_several_methods_prints_a_line_each(tiny_zoo, tmp_path, capsys):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for mid, p in zip((0, 3), paths, strict=True):
        assert run_cli(capsys, ["zoo", "export", tiny_zoo, mid, "--out", p])[0] == 0
    code, out, err = run_cli(capsys, ["compare", *paths, "--methods", "gram1,flat"])
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert [r[0] for r in rows] == ["gram1", "flat"]
    code, single, _ = run_cli(capsys, ["compare", *paths, "-m", "flat"])
    assert code == 0 and float(single) == pytest.approx(float(rows[1][1]), abs=1e-6)
    code, _, err = run_cli(capsys, ["compare", *paths, "--model", tmp_path, "--method", "flat"])
    assert_one_error(code, err, "--model", "--methods")
    for needs_more in ("stats", "cka", "outputs"):  # a set or real data: refused up front
        code, _, err = run_cli(capsys, ["compare", *paths, "-m", f"flat,{needs_more}"])
        assert_one_error(code, err, needs_more, "paramsim eval")
    code, help_text, _ = run_cli(capsys, ["compare", "--help"])
    assert "stats" not in help_text and "gram1" in help_text


def test_search_of_a_whole_zoo_answers_for_every_model(tiny_zoo, index_dir, capsys):
    code, out, err = run_cli(capsys, ["search", tiny_zoo, "--index", index_dir, "-k", "2"])
    assert code == 0, err
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 9  # one per model of the zoo
    for mid, block in enumerate(blocks):
        lines = block.splitlines()
        assert lines[0].startswith(f"query {tiny_zoo}:{mid} (task ")
        assert len(lines) == 4
        assert lines[2].split()[1] == str(mid)  # each model finds itself first

import json

import pytest
from eval_helpers import FakeZoo

import paramsim.zoo
from paramsim.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "nosuch"], "unknown method"),
        (["--splits", "0"], "--splits"),
        (["--out", "a-file"], "is a file"),
    ],
)
def test_bad_input_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    code = main(["eval", str(zoo), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_missing_zoo_exit_2(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nope"), "--methods", "flat", "--out", "x"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_command_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(paramsim.zoo, "open_zoo", lambda path: FakeZoo())
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            str(tmp_path / "z"),
            "--methods",
            "flat",
            "--splits",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--threads",
            "1",
            "--fixed-per-split",
            "--queries",
            "1",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| flat | yes |" in captured.out
    data = json.loads((out / "results.json").read_text())
    assert data["splits"] == 2 and data["zoo"] == "z"
    assert data["protocol"]["fixed_mode"] == "heldout" and not data["protocol"]["all_vs_all"]
    assert {"results.md", "cmc.png"} <= {p.name for p in out.iterdir()}


def test_extra_zoo_trains_lps(tiny_zoo, tmp_path):
    from paramsim.cli import main
    from paramsim.zoo import RECIPES, build_zoo

    groups = RECIPES["digits-groups"].with_overrides(tasks="groups:4", models_per_task=2)
    extra = build_zoo(groups.with_overrides(steps=(30, 40)), tmp_path / "groups", progress=False)
    out = tmp_path / "eval"
    args = ["eval", str(tiny_zoo), "--methods", "lps", "--splits", "1", "--out", str(out)]
    assert main([*args, "--extra-zoo", str(extra), "--quiet", "--seen-fraction", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["extra_zoo"] == [str(extra.resolve())] and "lps" in results["methods"]
    # group tasks are never held-out pair tasks: all 8 extra models train
    assert results["extra"]["n_models"] == 8 and results["extra"]["kept_per_split"] == [8]


def test_error_inside_a_method_fit_is_not_a_skip(tmp_path, monkeypatch):
    from paramsim import methods

    monkeypatch.setattr(paramsim.zoo, "open_zoo", lambda path: FakeZoo())
    row = methods.MethodEntry("broken-test", "eval_helpers:BrokenFit", "learned", "a bug in fit")
    monkeypatch.setitem(methods.METHODS, "broken-test", row)
    args = ["eval", str(tmp_path / "z"), "--methods", "flat,broken-test", "--splits", "1"]
    with pytest.raises(ZeroDivisionError):
        main([*args, "--out", str(tmp_path / "out"), "--quiet"])

"""Every bad command line is answered by exit code 2 and one `error:` line, and writes or
deletes nothing: not in the working directory, not in the zoo, not in the LPS model.

`{zoo}`, `{model}`, `{index}` name the session's tiny zoo, a saved LPS model and an index;
`mine` is a user's directory holding notes.txt, `file.txt` a user's file, `bad/<case>` an LPS
model whose lps.json was damaged as the case says (see DAMAGED).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_one_error, run_cli, snapshot

OUT_USERS_DIR = [  # --out names a directory of the user's: refused, never replaced
    (["fit", "{zoo}", "--out", "mine"], "is not an LPS model"),
    (["fit", "{zoo}", "--out", "mine", "--overwrite"], "is not an LPS model"),
    (["index", "build", "{zoo}", "--model", "{model}", "--out", "mine"], "is not an index"),
    (["index", "build", "{zoo}", "--model", "{model}", "--out", "mine", "--overwrite"], "index"),
    (["eval", "{zoo}", "--methods", "flat", "--out", "mine", "--overwrite"], "not an eval"),
    (["relate", "{zoo}", "--methods", "flat", "--out", "mine"], "is not a relation map"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "mine"], "is not a transfer"),
    (["reproduce", "--quick", "--zoo", "{zoo}", "--out", "mine"], "is not a reproduce"),
    (["reproduce", "--quick", "--zoo", "{zoo}", "--out", "mine", "--overwrite"], "reproduce"),
    (["embed", "{zoo}:0", "--model", "{model}", "--out", "mine"], "is a directory"),
    (["embed", "{zoo}:0", "--model", "{model}", "--out", "file.txt", "--overwrite"], "not a .npy"),
    # the data loss of issue 8: the zoo itself, or the LPS model, named as --out
    (["index", "build", "{zoo}", "--model", "{model}", "--out", "{zoo}", "--overwrite"], "index"),
    (["index", "build", "{zoo}", "--model", "{model}", "--out", "{model}"], "not an index"),
    (["fit", "{zoo}", "--out", "{zoo}", "--overwrite"], "is not an LPS model"),
    (["eval", "{zoo}", "--methods", "flat", "--out", "{model}"], "is not an eval report"),
]
OUT_FILE = [  # --out names a regular file
    (["fit", "{zoo}", "--out", "file.txt"], "is a file"),
    (["index", "build", "{zoo}", "--model", "{model}", "--out", "file.txt"], "is a file"),
    (["eval", "{zoo}", "--methods", "flat", "--out", "file.txt"], "is a file"),
    (["relate", "{zoo}", "--methods", "flat", "--out", "file.txt"], "is a file"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "file.txt"], "is a file"),
    (["reproduce", "--quick", "--zoo", "{zoo}", "--out", "file.txt"], "is a file"),
]
OUT_OURS = [  # an earlier output of the same command needs --overwrite
    (["index", "build", "{zoo}", "--model", "{model}", "--out", "{index}"], "--overwrite"),
    (["fit", "{zoo}", "--out", "{model}"], "--overwrite"),
]
BOUNDS = [
    (["eval", "{zoo}", "--out", "o", "--seed", "-1"], "--seed"),
    (["fit", "{zoo}", "--out", "o", "--threads", "-1"], "--threads"),
    (["fit", "{zoo}", "--out", "o", "--threads", "0"], "--threads"),
    (["fit", "{zoo}", "--out", "o", "--epochs", "0"], "--epochs"),
    (["fit", "{zoo}", "--out", "o", "--val-fraction", "1"], "--val-fraction"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "o", "--finetune-steps", "-5"], "steps"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "o", "--shots", "0"], "--shots"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "o", "--shots", "1,5000"], "--shots"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "o", "--repeats", "0"], "--repeats"),
    (["eval", "{zoo}", "--out", "o", "--splits", "100000000"], "--splits"),
    (["eval", "{zoo}", "--out", "o", "--test-fraction", "1.5"], "--test-fraction"),
    (["reproduce", "--quick", "--out", "o", "--splits", "0"], "--splits"),
    (["search", "{zoo}:0", "--index", "{index}", "-k", "0"], "-k"),
    (["compare", "a.pt", "b.pt", "--seed", "-1"], "--seed"),
    (["embed", "{zoo}:0", "--model", "{model}", "--out", "e.npy", "--threads", "-1"], "--threads"),
]
SPEC = '{"kind": "mlp", "input_shape": [1, 8, 8], "hidden": [4]'
BAD_SPECS = [
    "[1, 2]",
    "null",
    '"mlp"',
    '{"kind": "rnn", "input_shape": [1, 8, 8], "hidden": [4]}',
    '{"kind": "mlp", "input_shape": "abc", "hidden": [4]}',
    '{"kind": "mlp", "input_shape": [1, 8, 8], "hidden": 4}',
    SPEC + ', "bogus": 1}',
    '{"kind": "mlp"}',
    SPEC[:-3],
]
FLAGS = [  # contradictory, unknown or missing
    (["compare", "{zoo}/x.pt", "{zoo}/x.pt", "--model", "{model}", "--methods", "flat"], "one of"),
    (["compare", "a.pt", "b.pt", "--zoo", "{zoo}"], "--zoo needs --model"),
    (["compare", "a.pt", "b.pt", "--methods", "lps"], "unknown method"),
    (["compare", "a.pt", "b.pt", "--methods", "chain", "--method", "flat"], "once"),
    (["relate", "{zoo}", "--methods", "flat", "--method", "chain", "--out", "o"], "once"),
    (["fit", "{zoo}", "--out", "o", "--method", "lps", "--variant", "lps"], "once"),
    (["fit", "{zoo}", "--out", "o", "--method", "nope"], "unknown LPS method"),
    (["eval", "{zoo}", "--methods", "nosuch", "--out", "o"], "unknown method"),
    (["eval", "{zoo}", "--methds", "flat", "--out", "o"], "No such option"),
    (["fit", "{zoo}"], "--out"),
    (["fit"], "ZOO"),
    (["eval", "{zoo}", "-m", "lps", "--out", "o", "--extra-zoo", "mine"], "not a zoo"),
    (["fit", "{zoo}", "--out", "o", "--extra-zoo", "{zoo}", "--extra-zoo", "mine"], "not a zoo"),
    (["index", "build", "file.txt", "--model", "{model}", "--out", "o"], "not a zoo"),
    (["search", "nothing-here", "--index", "{index}"], "neither"),
    (["eval", "{zoo}", "--methods", "flat", "--out", "o", "--extra-zoo", "mine"], "none of"),
    (["eval", "{zoo}", "--methods", "lps", "--out", "o", "--extra-zoo", "{zoo}"], "ZOO itself"),
    (["fit", "{zoo}", "--out", "o", "--extra-zoo", "{zoo}"], "ZOO itself"),
    (["zoo", "build", "digits-pairs", "--out", "o", "--data-dir", "mine"], "drop --data-dir"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "o", "--targets", ""], "names no task"),
    (["transfer", "{zoo}", "--methods", "flat", "--out", "o", "--targets", " , "], "no task"),
    (["zoo", "build", "digits-pairs", "--out", "o", "--device", "tpu"], "unknown device"),
    (["zoo", "build", "digits-pairs", "--out", "o", "--device", "meta"], "unknown device"),
    (["zoo", "build", "digits-pairs", "--out", "o", "--device", "cuda:99"], "cuda"),
]
DAMAGED = {  # how bad/<case>/lps.json differs from a good one
    "list": [1, 2],
    "null": None,
    "string": "lps",
    "config-list": {"config": [1]},
    "emb-dim-string": {"config": {"emb_dim": "128"}},
    "bool-as-int": {"config": {"bias": 1}},
    "n-probes-huge": {"config": {"n_probes": 10_000_000}},
    "rank-negative": {"config": {"rank": -3}},
    "input-shape-huge": {"config": {"input_shape": [1, 100_000, 100_000]}},
    "input-shape-short": {"config": {"input_shape": [8, 8]}},
    "unknown-field": {"config": {"colour": "red"}},
    "fit-unknown-field": {"fit_config": {"speed": 1}},
    "fit-epochs-float": {"fit_config": {"epochs": 2.5}},
    "fit-lr-nan": {"fit_config": {"lr": float("nan")}},
    "fit-list": {"fit_config": []},
    "meta-list": {"meta": []},
    "no-config": {"config": None},
    "unknown-section": {"extra_section": {}},
    "version": {"format_version": 99},
}
LOADERS = [
    ["embed", "{zoo}:0", "--model", "{bad}", "--out", "e.npy"],
    ["index", "build", "{zoo}", "--model", "{bad}", "--out", "o"],
    ["search", "{zoo}:0", "--index", "{index}", "--model", "{bad}"],
    ["relate", "{zoo}", "--model", "{bad}", "--out", "o"],
]


@pytest.fixture(scope="module")
def damaged(lps_model, tmp_path_factory) -> Path:
    """One copy of the saved model per DAMAGED case, its lps.json changed as the case says."""
    root = tmp_path_factory.mktemp("damaged")
    good = json.loads((lps_model / "lps.json").read_text())
    for name, change in DAMAGED.items():
        d = root / name
        shutil.copytree(lps_model, d)
        if isinstance(change, dict):
            doc = json.loads(json.dumps(good))
            for key, value in change.items():
                if isinstance(value, dict) and isinstance(doc.get(key), dict):
                    doc[key].update(value)
                elif value is None:
                    doc.pop(key)
                else:
                    doc[key] = value
        else:
            doc = change
        (d / "lps.json").write_text(json.dumps(doc))
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The working directory: a user's directory with a file in it, and a user's file."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's notes")
    (tmp_path / "file.txt").write_text("the user's file")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check(capsys, args, roots, words=()) -> None:
    before = snapshot(*roots)
    code, _, err = run_cli(capsys, args)
    assert_one_error(code, err, *words)
    assert snapshot(*roots) == before


def _fill(args, tiny_zoo, lps_model, index_dir, bad="") -> list[str]:
    names = {"zoo": tiny_zoo, "model": lps_model, "index": index_dir, "bad": bad}
    return [a.format(**names) for a in args]


@pytest.mark.parametrize(
    "args, word", OUT_USERS_DIR + OUT_FILE + OUT_OURS + BOUNDS + FLAGS, ids=lambda v: str(v)
)
def test_command_line(workdir, tiny_zoo, lps_model, index_dir, capsys, args, word):
    args = _fill(args, tiny_zoo, lps_model, index_dir)
    _check(capsys, args, [workdir, Path(tiny_zoo), lps_model, index_dir], [word])


@pytest.mark.parametrize("spec", BAD_SPECS)
def test_bad_spec(workdir, tiny_zoo, capsys, spec):
    # the spec is refused before the checkpoints are read
    _check(capsys, ["compare", "a.pt", "b.pt", "--spec", spec], [workdir], ["--spec"])


@pytest.mark.parametrize("case", sorted(DAMAGED))
@pytest.mark.parametrize("loader", LOADERS, ids=lambda v: v[0])
def test_damaged_lps_json(workdir, tiny_zoo, lps_model, index_dir, damaged, capsys, case, loader):
    args = _fill(loader, tiny_zoo, lps_model, index_dir, bad=str(damaged / case))
    _check(capsys, args, [workdir, Path(tiny_zoo), damaged, index_dir], ["lps.json"])


def test_zoo_build_leaves_another_programs_registry_sqlite_alone(workdir, capsys):
    import sqlite3

    app = workdir / "app"
    app.mkdir()
    with sqlite3.connect(app / "registry.sqlite") as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    before = (app / "registry.sqlite").read_bytes()
    args = ["zoo", "build", "digits-pairs", "--out", str(app), "--models-per-task", "1"]
    _check(capsys, [*args, "--tasks", "0-1"], [workdir], ["another program's database"])
    assert (app / "registry.sqlite").read_bytes() == before
    assert sorted(p.name for p in app.iterdir()) == ["registry.sqlite"]

"""A damaged zoo is repaired by a rerun, and a hostile or broken registry is refused clearly."""

import json
import os
import shutil
import sqlite3

import pytest
import torch

from paramsim.cli import main
from paramsim.errors import ParamsimError
from paramsim.weights.arch import ArchSpec
from paramsim.zoo import RECIPES, Zoo, build_zoo
from paramsim.zoo.build import build_lock
from paramsim.zoo.store import file_sha256

RECIPE = RECIPES["digits-pairs"].with_overrides(
    tasks="0-1,2-3", models_per_task=2, steps=(5, 8), shard_size=2
)


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    """4 MLPs in 2 shards, a few steps each: the zoo every test here copies and damages."""
    return build_zoo(RECIPE, tmp_path_factory.mktemp("damage") / "zoo", progress=False)


@pytest.fixture
def zoo_copy(small_zoo, tmp_path):
    return shutil.copytree(small_zoo, tmp_path / "zoo")


def _shard_digests(directory):
    return {p.name: file_sha256(p) for p in sorted((directory / "shards").iterdir())}


def _model_digests(directory):
    with sqlite3.connect(directory / "registry.sqlite") as conn:
        return dict(conn.execute("SELECT id, sha256 FROM models"))


def _sql(directory, *statements):
    with sqlite3.connect(directory / "registry.sqlite") as conn:
        for statement in statements:
            conn.execute(statement)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------- resume repairs


def test_rebuild_retrains_exactly_the_damaged_shard_to_the_same_bytes(small_zoo, zoo_copy, capsys):
    before = _shard_digests(small_zoo)
    assert len(before) == 2
    damaged, intact = sorted(before)
    path = zoo_copy / "shards" / damaged
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # one byte of tensor data: the file still parses
    path.write_bytes(bytes(raw))
    stale = zoo_copy / "shards" / f".{intact}.k1ll3d_.tmp"
    stale.write_bytes(b"half a shard")
    keep = zoo_copy / "shards" / "notes.txt"
    keep.write_text("not ours")
    intact_mtime = os.stat(zoo_copy / "shards" / intact).st_mtime_ns
    assert Zoo(zoo_copy).verify() == [damaged]
    assert main(["zoo", "info", str(zoo_copy), "--verify"]) == 2
    assert damaged in _one_error_line(capsys)

    build_zoo(RECIPE, zoo_copy, progress=False)
    assert Zoo(zoo_copy).verify() == []
    assert _model_digests(zoo_copy) == _model_digests(small_zoo)
    after = _shard_digests(zoo_copy)
    assert after.pop("notes.txt") and after == before
    assert os.stat(zoo_copy / "shards" / intact).st_mtime_ns == intact_mtime  # not redone
    assert not stale.exists() and keep.read_text() == "not ours"
    assert main(["zoo", "info", str(zoo_copy), "--verify"]) == 0
    assert "every shard matches its checksum" in capsys.readouterr().out


def test_rebuild_redoes_a_missing_shard_and_a_missing_row(small_zoo, zoo_copy):
    first, second = sorted(_shard_digests(small_zoo))
    (zoo_copy / "shards" / first).unlink()
    _sql(zoo_copy, f"DELETE FROM models WHERE shard = '{second}'")
    build_zoo(RECIPE, zoo_copy, progress=False)
    assert _model_digests(zoo_copy) == _model_digests(small_zoo)
    assert Zoo(zoo_copy).verify() == [] and Zoo(zoo_copy).summary()["complete"]


def test_a_second_build_into_the_same_zoo_is_refused(zoo_copy):
    with build_lock(zoo_copy), pytest.raises(ParamsimError, match="another build"):
        build_zoo(RECIPE, zoo_copy, progress=False)


# ----------------------------------------------------------------------------- --out checks


def test_build_refuses_a_directory_of_user_files_and_a_regular_file(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    args = ["zoo", "build", "digits-pairs", "--tasks", "0-1", "--models-per-task", "1"]
    assert main([*args, "--out", str(mine), "--quiet"]) == 2
    assert "is not a zoo" in _one_error_line(capsys)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert (mine / "thesis.tex").read_text() == "years of work"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert main([*args, "--out", str(afile), "--quiet"]) == 2
    assert "not a directory" in _one_error_line(capsys)
    assert afile.read_text() == "x"


def test_shards_path_that_is_a_file_is_a_one_line_error(zoo_copy, capsys):
    shutil.rmtree(zoo_copy / "shards")
    (zoo_copy / "shards").write_text("not a folder")
    with pytest.raises(ParamsimError, match="not a directory"):
        Zoo(zoo_copy)
    with pytest.raises(ParamsimError, match="not a directory"):
        build_zoo(RECIPE, zoo_copy, progress=False)
    assert main(["zoo", "info", str(zoo_copy)]) == 2
    _one_error_line(capsys)


def test_registry_that_is_not_sqlite_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "zoo"
    bad.mkdir()
    (bad / "registry.sqlite").write_bytes(b"this is not a database" * 100)
    assert main(["zoo", "info", str(bad)]) == 2
    assert "registry" in _one_error_line(capsys)
    with pytest.raises(ParamsimError, match="registry"):
        build_zoo(RECIPE, bad, progress=False)


def test_zoo_of_the_old_store_format_reads_but_is_not_resumed(zoo_copy):
    _sql(
        zoo_copy,
        "ALTER TABLE models DROP COLUMN val_acc",
        "UPDATE meta SET value = '1' WHERE key = 'format'",
    )
    zoo = Zoo(zoo_copy)
    assert len(zoo) == 4 and all(r.val_acc is None for r in zoo.records)
    with pytest.raises(ParamsimError, match="store format 1"):
        build_zoo(RECIPE, zoo_copy, progress=False)


# ----------------------------------------------------------------------------- hostile rows


@pytest.mark.parametrize(
    "shard",
    [
        "../registry.sqlite",
        "/etc/hostname",
        "sub/shard-00000.safetensors",
        ".shard-00000.safetensors",
        "..",
        "shard-00000.safetensors\n",
    ],
)
def test_shard_path_outside_shards_folder_is_refused(zoo_copy, shard, capsys):
    with sqlite3.connect(zoo_copy / "registry.sqlite") as conn:
        conn.execute("UPDATE models SET shard = ? WHERE id = 0", (shard,))
    with pytest.raises(ParamsimError, match="not a plain file name"):
        len(Zoo(zoo_copy))
    assert main(["zoo", "export", str(zoo_copy), "0", "--out", str(zoo_copy / "m.pt")]) == 2
    _one_error_line(capsys)
    assert not (zoo_copy / "m.pt").exists()


def test_shard_symlink_leading_outside_the_zoo_is_refused(zoo_copy, tmp_path):
    name = Zoo(zoo_copy).records[0].shard
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(zoo_copy / "shards" / name, outside)
    (zoo_copy / "shards" / name).symlink_to(outside)
    with pytest.raises(ParamsimError, match="outside"):
        Zoo(zoo_copy).state_dict(0)


@pytest.mark.parametrize(
    "statement, message",
    [
        ("DROP TABLE models", "no such table"),
        ("ALTER TABLE models DROP COLUMN retrains", "no such column"),
        ("UPDATE models SET arch = 'not json' WHERE id = 1", "model row 1"),
        ("UPDATE models SET arch = '[1, 2]' WHERE id = 1", "model row 1"),
        ("""UPDATE models SET arch = '{"kind": "rnn"}' WHERE id = 1""", "model row 1"),
        ("UPDATE models SET test_acc = 'abc' WHERE id = 2", "model row 2"),
        ("UPDATE models SET train_acc = 7 WHERE id = 2", "model row 2"),
        ("UPDATE models SET task_id = 99 WHERE id = 3", "model row 3"),
        ("UPDATE models SET task_id = 'x' WHERE id = 3", "model row 3"),
        ("UPDATE models SET retrains = -1 WHERE id = 0", "model row 0"),
        ("UPDATE models SET sha256 = 'short' WHERE id = 0", "model row 0"),
        ("UPDATE models SET settings = '[]' WHERE id = 0", "model row 0"),
        ("UPDATE tasks SET sides = '[[1], [1]]' WHERE id = 0", "task row 0"),
        ("UPDATE tasks SET sides = 'nope' WHERE id = 0", "task row 0"),
        ("UPDATE meta SET value = '{' WHERE key = 'dataset'", "meta value 'dataset'"),
    ],
)
def test_malformed_registry_is_one_line_error(zoo_copy, statement, message, capsys):
    _sql(zoo_copy, statement)
    with pytest.raises(ParamsimError, match=message) as info:
        zoo = Zoo(zoo_copy)
        zoo.meta, zoo.records  # noqa: B018
    assert "\n" not in str(info.value)
    assert main(["zoo", "info", str(zoo_copy)]) == 2
    _one_error_line(capsys)


@pytest.mark.parametrize(
    "hidden, message",
    [
        ([4000000, 32], "model row 1"),  # would build a 1 GB module
        ([64, 32], "does not match the tensors"),  # plausible, but not what the shard holds
    ],
)
def test_edited_arch_is_refused_before_any_module_is_built(zoo_copy, hidden, message, monkeypatch):
    arch = json.loads(Zoo(zoo_copy).records[1].arch.to_json())
    arch["hidden"] = hidden
    with sqlite3.connect(zoo_copy / "registry.sqlite") as conn:
        conn.execute("UPDATE models SET arch = ? WHERE id = 1", (json.dumps(arch),))

    def no_build(self):
        raise AssertionError(f"built {self.label} before checking it")

    monkeypatch.setattr(ArchSpec, "build", no_build)
    with pytest.raises(ParamsimError, match=message):
        Zoo(zoo_copy).module(1)


# ----------------------------------------------------------------------------- output


def test_info_escapes_control_characters_from_the_registry(zoo_copy, capsys):
    _sql(zoo_copy, """UPDATE meta SET value = '"evil\\u001b[2J\\u202e"' WHERE key = 'recipe'""")
    assert Zoo(zoo_copy).meta["recipe"] == "evil\x1b[2J\u202e"
    assert main(["zoo", "info", str(zoo_copy)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "evil\\x1b[2J\\u202e" in out


def test_export_leaves_no_weights_behind_when_the_json_fails(small_zoo, tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    real = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(out)]) == 2
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(os, "replace", real)
    (tmp_path / "m.safetensors.json").mkdir()
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(out)]) == 2
    assert os.listdir(tmp_path) == ["m.safetensors.json"]
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(tmp_path / "n.pt")]) == 0
    spec = json.loads((tmp_path / "n.pt.json").read_text())
    assert spec["test_acc"] == Zoo(small_zoo).records[0].test_acc
    state = torch.load(tmp_path / "n.pt", weights_only=True)
    assert state.keys() == Zoo(small_zoo).records[0].arch.param_shapes().keys()


@pytest.mark.parametrize("seed", [-1, 2**40, 1.5, True])
def test_bad_zoo_seed_is_refused_before_anything_is_written(seed, tmp_path):
    with pytest.raises(ParamsimError, match="zoo seed"):
        build_zoo(RECIPE, tmp_path / "z", seed=seed, progress=False)
    assert not (tmp_path / "z").exists()


def test_export_never_replaces_a_users_file(small_zoo, tmp_path, capsys):
    """An existing file of the checkpoint's or its sidecar's name is kept unless --overwrite,
    and even then only when it is what export writes."""
    notes, mine = tmp_path / "n.safetensors", tmp_path / "k.pt.json"
    notes.write_text("notes")
    mine.write_text("mine")
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(notes), "--overwrite"]) == 2
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(tmp_path / "k.pt")]) == 2
    assert notes.read_text() == "notes" and mine.read_text() == "mine"
    assert not (tmp_path / "k.pt").exists() and not (tmp_path / "n.safetensors.json").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error:") and "not a" in e for e in err)
    out = tmp_path / "m.safetensors"
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(out)]) == 0
    assert main(["zoo", "export", str(small_zoo), "1", "--out", str(out)]) == 2  # an earlier one
    assert "--overwrite" in capsys.readouterr().err
    assert main(["zoo", "export", str(small_zoo), "1", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((tmp_path / "m.safetensors.json").read_text())["task"] == (
        Zoo(small_zoo).records[1].task.name
    )
    pt = tmp_path / "m.pt"
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(pt)]) == 0
    assert main(["zoo", "export", str(small_zoo), "1", "--out", str(pt), "--overwrite"]) == 0
    import zipfile

    with zipfile.ZipFile(tmp_path / "photos.safetensors", "w") as z:  # a zip, not safetensors
        z.writestr("a.txt", "mine")
    zipped = (tmp_path / "photos.safetensors").read_bytes()
    args = ["zoo", "export", str(small_zoo), "0", "--out", str(tmp_path / "photos.safetensors")]
    assert main([*args, "--overwrite"]) == 2
    assert (tmp_path / "photos.safetensors").read_bytes() == zipped
    own = tmp_path / "own.pt"  # a real checkpoint of the user's, with no spec beside it
    torch.save({"w": torch.zeros(3)}, own)
    before = own.read_bytes()
    assert main(["zoo", "export", str(small_zoo), "0", "--out", str(own), "--overwrite"]) == 2
    assert "without own.pt.json" in capsys.readouterr().err
    assert own.read_bytes() == before and not (tmp_path / "own.pt.json").exists()


def test_a_registry_with_sqlite_statistics_still_resumes(zoo_copy):
    import sqlite3

    with sqlite3.connect(zoo_copy / "registry.sqlite") as conn:
        conn.execute("ANALYZE")  # adds sqlite's own sqlite_stat1 table
    before = _shard_digests(zoo_copy)
    assert build_zoo(RECIPE, zoo_copy, progress=False) == zoo_copy
    assert _shard_digests(zoo_copy) == before

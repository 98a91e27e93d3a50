import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from paramsim.cli import main
from paramsim.errors import ParamsimError
from paramsim.zoo import RECIPES, Zoo, build_zoo, load_recipe


def test_registry_records_ground_truth_and_settings(tiny_zoo):
    zoo = Zoo(tiny_zoo)
    assert len(zoo) == 9 and [t.name for t in zoo.tasks] == ["0 vs 1", "0 vs 2", "3 vs 4"]
    rec = zoo.records[4]
    assert rec.task_id == 1 and rec.output_classes == ((0,), (2,))
    assert {"seed", "lr", "init_scale", "data_fraction", "steps"} <= set(rec.settings)
    assert len({r.settings["seed"] for r in zoo.records}) == 9
    assert len({round(r.settings["lr"], 8) for r in zoo.records}) == 9
    assert all(0.5 <= r.test_acc <= 1 for r in zoo.records)
    assert zoo.summary()["complete"] and zoo.verify() == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_exported_module_reproduces_recorded_accuracy(tiny_zoo, tmp_path, suffix):
    out = tmp_path / f"model{suffix}"
    assert main(["zoo", "export", str(tiny_zoo), "5", "--out", str(out)]) == 0
    spec = json.loads(out.with_name(out.name + ".json").read_text())
    zoo = Zoo(tiny_zoo)
    rec = zoo.records[5]
    sd = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    module = rec.arch.build().eval()
    module.load_state_dict(sd)
    x, y = rec.task.test_data(zoo.dataset())
    acc = (module(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(rec.test_acc) and spec["test_acc"] == pytest.approx(acc)


def test_damaged_shard_is_reported_by_name(tiny_zoo, tmp_path):
    import shutil

    copy = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, copy)
    shard = Zoo(copy).records[0].shard
    path = copy / "shards" / shard
    tensors = load_file(path)
    key = next(k for k in tensors if k.startswith("0/"))
    tensors[key] = tensors[key] + 1e-3
    from safetensors.torch import save_file

    save_file(tensors, path)
    zoo = Zoo(copy)
    assert zoo.verify() == [shard]
    with pytest.raises(ParamsimError, match=f"model 0 in shard {shard}"):
        zoo.state_dict(0)
    assert main(["zoo", "info", str(copy), "--verify"]) == 2


def _hashes(directory):
    try:
        with sqlite3.connect(directory / "registry.sqlite") as conn:
            return dict(conn.execute("SELECT id, sha256 FROM models"))
    except sqlite3.OperationalError:  # not created yet, or locked by the writer
        return {}


def test_killed_build_resumes_to_the_same_zoo(tmp_path):
    args = ["--tasks", "0-1,2-3,4-5,6-7,8-9", "--models-per-task", "2", "--shard-size", "1"]
    recipe = tmp_path / "short.toml"
    recipe.write_text('base = "digits-pairs"\nsteps = [300, 400]\n')
    cmd = [
        sys.executable,
        "-m",
        "paramsim",
        "zoo",
        "build",
        str(recipe),
        "--quiet",
        "--threads",
        "1",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed), *args])
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (killed / "registry.sqlite").exists() and len(_hashes(killed)) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_hashes(killed))
    assert 1 <= partial < 10, "the build should have been killed part way"
    subprocess.run([*cmd, "--out", str(killed), *args], check=True)
    clean = tmp_path / "clean"
    subprocess.run([*cmd, "--out", str(clean), *args], check=True)
    assert _hashes(killed) == _hashes(clean) and len(_hashes(clean)) == 10
    leftovers = [p for p in os.listdir(killed / "shards") if p.endswith(".tmp")]
    assert leftovers == []


def test_rebuilding_into_a_zoo_of_other_settings_is_refused(tiny_zoo):
    other = RECIPES["digits-pairs"].with_overrides(tasks="0-1", models_per_task=1)
    with pytest.raises(ParamsimError, match="other settings .*models_per_task") as err:
        build_zoo(other, tiny_zoo, progress=False)
    assert "1 now" in str(err.value)  # which setting differs, and its two values
    with pytest.raises(ParamsimError, match="seed 0 there, 5 now"):
        same = RECIPES["digits-pairs"].with_overrides(
            tasks="0-1,0-2,3-4", models_per_task=3, steps=(60, 80), shard_size=4
        )  # tiny_zoo's own recipe
        build_zoo(same, tiny_zoo, seed=5, progress=False)


def test_recipe_toml_and_errors(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('base = "digits-pairs-cnn"\nmodels_per_task = 2\nlog10_lr = [-3, -2]\n')
    rec = load_recipe(str(path))
    assert rec.name == "mine" and rec.models_per_task == 2 and rec.archs[0]["kind"] == "cnn"
    path.write_text("colour = 3\n")
    with pytest.raises(ParamsimError, match="unknown recipe field .colour."):
        load_recipe(str(path))
    with pytest.raises(ParamsimError, match="unknown recipe"):
        load_recipe("nope")


def test_cli_info_json_and_errors(tiny_zoo, capsys, tmp_path):
    assert main(["zoo", "info", str(tiny_zoo), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["models"] == 9 and info["tasks"] == 3 and info["test_acc"]["min"] > 0.5
    assert main(["zoo", "info", str(tmp_path / "missing")]) == 2
    assert "not a zoo" in capsys.readouterr().err
    assert main(["zoo", "export", str(tiny_zoo), "99", "--out", str(tmp_path / "m.pt")]) == 2
    assert main(["zoo", "export", str(tiny_zoo), "0", "--out", str(tmp_path / "m.bin")]) == 2
    assert not (tmp_path / "m.pt").exists()


def test_resuming_a_zoo_whose_recipe_now_draws_other_tasks_is_refused(tmp_path, monkeypatch):
    """Equal settings, other drawn tasks (group tasks drawn by another paramsim version): a
    resume would file new models under the old task names, so it is refused."""
    import paramsim.zoo.recipes as recipes
    from paramsim.data import group_tasks

    recipe = RECIPES["digits-pairs"].with_overrides(
        tasks="groups:2", models_per_task=1, steps=(5, 5), shard_size=1
    )
    out = build_zoo(recipe, tmp_path / "groups", progress=False)
    build_zoo(recipe, out, progress=False)  # the same draw resumes (nothing left to do)
    monkeypatch.setattr(
        recipes, "group_tasks", lambda n, k, seed=0: group_tasks(n, k, seed=seed + 1)
    )
    with pytest.raises(ParamsimError, match="other tasks than this recipe plans now"):
        build_zoo(recipe, out, progress=False)

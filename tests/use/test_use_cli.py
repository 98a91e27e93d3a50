import importlib
import json

import pytest

from paramsim.cli import main
from paramsim.use.reproduce import ReproduceConfig, reproduce

rep = importlib.import_module(
    "paramsim.use.reproduce"
)  # the module; the package exports the function


def test_relate_command(use_zoo, tmp_path, capsys):
    out = tmp_path / "rel"
    code = main(["relate", str(use_zoo.path), "--method", "gram1", "--out", str(out), "-q"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Spearman rho" in text and "most related" in text and "least related" in text
    assert (out / "relation.json").is_file() and (out / "map.png").is_file()


def test_relate_command_several_methods(use_zoo, tmp_path, capsys):
    out = tmp_path / "rel"
    assert main(["relate", str(use_zoo.path), "--method", "gram1,flat", "--out", str(out)]) == 0
    assert (out / "gram1" / "dendrogram.png").is_file()
    assert (out / "flat" / "relation.json").is_file()


def test_transfer_command(use_zoo, tmp_path, capsys):
    out = tmp_path / "tr"
    args = ["transfer", str(use_zoo.path), "--method", "gram1", "--shots", "1"]
    args += ["--repeats", "1", "--finetune-steps", "5", "--out", str(out), "-q"]
    args += ["--select", "model", "--select-top", "2"]
    assert main(args) == 0
    assert "gain over random" in capsys.readouterr().out
    doc = json.loads((out / "transfer.json").read_text())
    assert doc["config"]["shots"] == [1] and "gram1" in doc["methods"]
    assert doc["config"]["select"] == "model" and doc["config"]["select_top"] == 2
    assert set(doc["methods"]["gram1"]["shots"]["1"]["rules"]) == {"task", "model"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["relate", "{zoo}", "--out", "x"], "--model DIR"),
        (["transfer", "{zoo}", "--method", "gram1", "--shots", "0", "--out", "x"], "--shots"),
        (["relate", "{zoo}", "--method", "nosuch", "--out", "x"], "unknown method"),
        (["relate", "{zoo}", "--model", "{tmp}", "--out", "x"], "not a saved LPS model"),
        (["relate", "{tmp}/nozoo", "--method", "gram1", "--out", "x"], "does not exist"),
    ],
)
def test_bad_input_exit_2(use_zoo, tmp_path, capsys, args, message):
    args = [a.format(zoo=use_zoo.path, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_reproduce_quick_and_cached(use_zoo, tmp_path):
    out = tmp_path / "report"
    lines: list[str] = []
    reproduce(out, use_zoo.path, ReproduceConfig.quick(), lines.append)
    readme = (out / "README.md").read_text()
    for part in ("## 1.", "## 2.", "## 3.", "eval/cmc.png", "transfer/transfer.png", "lps"):
        assert part in readme
    # the report says which candidates were fine-tuned (the default subset, recorded in config)
    per_task = json.loads((out / "transfer/transfer.json").read_text())["config"]
    assert per_task["sources_per_task"] == 3 and "3 of each task's models" in readme
    for path in ("eval/results.json", "relate/gram1/map.png", "transfer/transfer.json"):
        assert (out / path).is_file()
    first = json.loads((out / "timings.json").read_text())
    again: list[str] = []
    reproduce(out, use_zoo.path, ReproduceConfig.quick(), again.append)
    # every stage is reused (how fast that is: benchmarks/bench_reproduce.py)
    assert sum("reusing" in m for m in again) >= 4
    timings = json.loads((out / "timings.json").read_text())
    # a reused stage keeps the time of the run that computed it
    assert timings["computed"]["transfer"] == first["this_run"]["transfer"]


def test_reproduce_cache_keys_follow_the_lps_settings(monkeypatch):
    pytest.importorskip("paramsim.lps")
    full, quick = rep._lps_state(ReproduceConfig()), rep._lps_state(ReproduceConfig.quick())
    assert full.startswith("ok ") and quick.startswith("ok ") and full != quick
    # a release that changes an LPS default (not only lps_epochs) must not reuse old results
    monkeypatch.setattr("paramsim.lps.method.VARIANT_DEFAULTS", {"lps": {"epochs": 99}})
    assert rep._lps_state(ReproduceConfig()) != full


def test_reproduce_goes_on_without_lps(use_zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(rep, "_lps_similarity", lambda cfg: "paramsim.lps is not installed")
    out = tmp_path / "report"
    reproduce(out, use_zoo.path, ReproduceConfig.quick())
    readme = (out / "README.md").read_text()
    assert readme.count("skipped: paramsim.lps is not installed") >= 3
    assert "gram1" in readme


def test_reproduce_command_refuses_non_zoo_dir(tmp_path, capsys):
    bad = tmp_path / "notzoo"
    bad.mkdir()
    (bad / "file.txt").write_text("x")
    assert main(["reproduce", "--quick", "--zoo", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a zoo directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_lps(use_zoo, tmp_path_factory):
    lps = pytest.importorskip("paramsim.lps")
    nets = use_zoo.networks()
    tasks = [r.task for r in use_zoo.records]
    keep = [i for i, t in enumerate(tasks) if t.name not in ("3 vs 4", "4 vs 5")]
    model = lps.LPS(fit_config=lps.FitConfig(epochs=1, val_fraction=0.0))
    model.fit([nets[i] for i in keep], [tasks[i] for i in keep])
    return model.save(tmp_path_factory.mktemp("lps") / "lps")


def test_relate_and_transfer_with_saved_model(use_zoo, saved_lps, tmp_path, capsys):
    out = tmp_path / "rel"
    assert main(["relate", str(use_zoo.path), "--model", str(saved_lps), "--out", str(out)]) == 0
    assert "trained on 4 of the 6 tasks" in capsys.readouterr().out
    args = ["transfer", str(use_zoo.path), "--model", str(saved_lps), "--shots", "1"]
    args += ["--repeats", "1", "--finetune-steps", "5", "--out", str(tmp_path / "tr"), "-q"]
    assert main(args) == 0
    doc = json.loads((tmp_path / "tr" / "transfer.json").read_text())
    per = doc["methods"]["lps"]["shots"]["1"]["chosen"]["per_task"]
    assert set(per) == {"3 vs 4", "4 vs 5"}  # only the tasks the model never saw

import json
import os

import numpy as np
import pytest
from eval_helpers import FlatMethod, NoiseMethod

from paramsim import atomic
from paramsim.eval import evaluate, index_tasks, make_splits, report


@pytest.fixture(scope="module")
def results(synth):
    nets, model_tasks = synth
    labels, _ = index_tasks(model_tasks)
    splits = make_splits(labels, n_splits=2, seed=0, test_fraction=0.5)
    res = evaluate(nets, model_tasks, {"flat": FlatMethod(), "noise": NoiseMethod()}, splits)
    res["skipped"]["lps"] = "paramsim.lps is not available"
    return res


def test_write_report(results, tmp_path):
    out = tmp_path / "deep" / "out"
    written = report.write_report(results, out)
    assert set(written) == {"results.json", "results.md", "cmc.png", "relation.png"}
    data = json.loads((out / "results.json").read_text())  # strict JSON, no NaN
    assert data["methods"]["flat"]["map"]["mean"] == pytest.approx(
        results["methods"]["flat"]["map"]["mean"]
    )
    assert data["skipped"] == {"lps": "paramsim.lps is not available"}
    md = (out / "results.md").read_text()
    assert "| flat | yes |" in md and "±" in md and "skipped" in md
    for png in ("cmc.png", "relation.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_table_rows_and_nan_cells(results):
    res = json.loads(json.dumps(report.jsonable(results)))
    res["methods"]["noise"]["relation_spearman"] = {"mean": None, "std": None}
    table = report.format_table(res).splitlines()
    assert table[0].startswith("| method | weights-only | mAP | rank-1 | rank-5 | AUC |")
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert set(rows) == {"flat", "noise", "lps"}
    assert "–" in rows["noise"]
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_jsonable_handles_numpy_and_nan():
    assert report.jsonable({"a": np.float32(np.nan), "b": np.arange(2), "c": (np.int64(3),)}) == {
        "a": None,
        "b": [0, 1],
        "c": [3],
    }


def test_failure_leaves_old_files_and_no_temp(results, tmp_path, monkeypatch):
    report.write_report(results, tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError):
        report.write_report(results, tmp_path)
    after = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    assert after == before


def test_render_error_writes_nothing(results, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "plot_relation", broken)
    with pytest.raises(RuntimeError):
        report.write_report(results, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_per_task_ap_over_the_splits_that_held_each_task_out(results):
    held = {}
    for d in results["split_details"]:
        for t in d["test_tasks"]:
            held[results["tasks"][t]] = held.get(results["tasks"][t], 0) + 1
    for name in ("flat", "noise"):
        task_ap = results["methods"][name]["task_ap"]
        assert {t: v["splits"] for t, v in task_ap.items()} == held
        # every query has the same number of same-task partners here, so the mean of the
        # per-task APs weighted by splits is the mean of the per-split mAPs
        weighted = sum(v["mean"] * v["splits"] for v in task_ap.values()) / sum(held.values())
        assert weighted == pytest.approx(results["methods"][name]["map"]["mean"])


def test_hardest_tasks_table_lists_the_best_methods_worst_task_first(results):
    res = json.loads(json.dumps(report.jsonable(results)))
    best = report.best_method(res)
    per_task = res["methods"][best]["task_ap"]
    worst = min(per_task, key=lambda t: per_task[t]["mean"])
    text = report.format_hardest(res, n=3)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "splits" not in line]
    assert len(rows) == min(3, len(per_task))
    assert rows[0].startswith(f"| {worst} |")
    assert "| flat | noise |" in text
    assert text in report.format_markdown(res)
    res["methods"][best]["task_ap"][worst]["mean"] = None  # NaN in results.json: last
    rows = [ln for ln in report.format_hardest(res, n=99).splitlines() if ln.startswith("| ")]
    assert rows[-1].startswith(f"| {worst} |")
    del res["methods"][best]["task_ap"]  # results.json of an older version: no section
    assert report.format_hardest(res) == ""

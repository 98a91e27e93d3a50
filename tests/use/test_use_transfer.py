import json
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from paramsim.errors import ParamsimError
from paramsim.features import get_method
from paramsim.features.base import Context, Method
from paramsim.use._common import Similarity, load_similarity
from paramsim.use.transfer import (
    TransferConfig,
    choose_source,
    evaluate_transfer,
    fine_tune,
    format_transfer_table,
    kshot,
    select_sources,
    write_transfer,
)
from paramsim.use.transfer.stats import bootstrap_ci
from paramsim.zoo.finetune import EvalSet, MemoryBudget, SourceBank

QUICK = dict(shots=(1,), repeats=1, probe_steps=30, finetune_steps=10, costs=False)


@pytest.fixture(scope="module")
def gram1_results(use_zoo):
    sims = {"gram1": load_similarity(method="gram1")}
    return evaluate_transfer(use_zoo, sims, TransferConfig(**QUICK))


def test_baselines_bound_the_chosen_source(gram1_results):
    res = gram1_results
    base = res["baselines"]["1"]
    per = res["methods"]["gram1"]["shots"]["1"]
    for task, acc in per["chosen"]["per_task"].items():
        assert base["random"]["per_task"][task] - 1e-12 <= base["oracle"]["per_task"][task]
        assert acc <= base["oracle"]["per_task"][task] + 1e-12
    g = per["gain_over_random"]
    assert g["lo"] <= g["mean"] <= g["hi"] and g["n"] == len(res["tasks"])
    # the chosen source always belongs to another task
    for key, (_, task) in per["chosen_sources"].items():
        assert task != key.split("#")[0]


def test_transfer_is_reproducible(use_zoo, gram1_results):
    again = evaluate_transfer(
        use_zoo, {"gram1": load_similarity(method="gram1")}, TransferConfig(**QUICK)
    )
    assert again["baselines"] == gram1_results["baselines"]
    assert again["methods"]["gram1"]["shots"] == gram1_results["methods"]["gram1"]["shots"]


def test_stacked_finetune_equals_single_model(use_zoo):
    """The vectorised bank must give what fine-tuning one model alone gives."""
    dataset = use_zoo.dataset()
    task = use_zoo.tasks[0]
    x, y = kshot(task, dataset, 2, (0, 2, 0, 0))
    xt, yt = task.test_data(dataset)
    sources = [r.id for r in use_zoo.records if r.task_id != 0][:4]
    bank = SourceBank(use_zoo)
    evals = [[EvalSet.of(xt, yt)]]
    accs = bank.finetune([(m, 0) for m in sources], [(x, y)], evals, lr=3e-3, steps=8)[:, 0]
    # a budget that fits one model per stacked run gives the same numbers
    tiny = MemoryBudget(1)
    again = bank.finetune([(m, 0) for m in sources], [(x, y)], evals, 3e-3, 8, budget=tiny)
    np.testing.assert_array_equal(again[:, 0], accs)
    for m, acc in zip(sources, accs, strict=True):
        module = fine_tune(use_zoo, m, x, y, steps=8, lr=3e-3)
        with torch.no_grad():
            single = (module(xt).argmax(1) == yt).double().mean().item()
        assert acc == pytest.approx(single, abs=1e-9)


def test_head_only_keeps_hidden_layers(use_zoo):
    x, y = kshot(use_zoo.tasks[1], use_zoo.dataset(), 1, (0, 1, 0, 1))
    tuned = fine_tune(use_zoo, 0, x, y, steps=5, head_only=True).state_dict()
    source = use_zoo.state_dict(0)
    last = max(int(k.split(".")[0]) for k in source)
    for key, value in source.items():
        if int(key.split(".")[0]) != last:
            torch.testing.assert_close(tuned[key], value)
    assert not torch.equal(tuned[f"{last}.weight"], source[f"{last}.weight"])


class _Recording(Method):
    """A learned method that notes which tasks each fit saw (embeds like gram1)."""

    learned = True
    fits: list[set[str]] = []

    def fit(self, networks, tasks, context=None):
        _Recording.fits.append({t.name for t in tasks})
        return self

    def embed(self, networks: Sequence, context: Context) -> np.ndarray:
        return get_method("gram1").embed(networks, context)


def test_learned_method_never_fits_on_its_target_task(use_zoo):
    _Recording.fits = []
    sim = Similarity("rec", _Recording(), learned=True)
    res = evaluate_transfer(use_zoo, {"rec": sim}, TransferConfig(**QUICK, folds=3))
    assert len(_Recording.fits) == 3
    folds = res["folds"]
    for f, seen in enumerate(_Recording.fits):
        held = {t for t, g in folds.items() if g == f}
        assert held and not (held & seen)
        assert seen | held == set(res["tasks"])
    assert res["methods"]["rec"]["shots"]["1"]["n_target_tasks"] == len(use_zoo.tasks)


def test_saved_model_trained_on_every_task_is_refused(use_zoo):
    sim = Similarity(
        "lps", get_method("gram1"), True, frozenset(t.name for t in use_zoo.tasks), "saved"
    )
    said: list[str] = []
    with pytest.raises(ParamsimError, match="trained on every target task"):
        evaluate_transfer(use_zoo, {"lps": sim}, TransferConfig(**QUICK), progress=said.append)
    assert said == []  # refused before any probe was trained or source fine-tuned


def test_saved_model_is_scored_on_unseen_tasks_only(use_zoo):
    seen = frozenset(t.name for t in use_zoo.tasks[:4])
    sim = Similarity("lps", get_method("gram1"), True, seen, "saved")
    res = evaluate_transfer(use_zoo, {"lps": sim}, TransferConfig(**QUICK))
    per = res["methods"]["lps"]["shots"]["1"]["chosen"]["per_task"]
    assert set(per) == {t.name for t in use_zoo.tasks[4:]}


def test_select_sources_ranks_other_models(use_zoo):
    dataset = use_zoo.dataset()
    x, y = kshot(use_zoo.tasks[0], dataset, 5, (1, 5, 0, 0))
    got = select_sources(
        use_zoo, "gram1", x.numpy(), y.numpy(), k=4, exclude_tasks=["0 vs 1"], select="task"
    )
    assert len(got) == 4
    assert all(g["task"] != "0 vs 1" for g in got)
    # task rule: tasks by mean similarity, then models by similarity within a task
    keys = [(-g["task_similarity"], g["task"], -g["similarity"]) for g in got]
    assert keys == sorted(keys)
    assert got[0]["task_similarity"] == max(g["task_similarity"] for g in got)
    by_model = select_sources(
        use_zoo, "gram1", x.numpy(), y.numpy(), k=4, exclude_tasks=["0 vs 1"], select="model"
    )
    sims = [g["similarity"] for g in by_model]
    assert sims == sorted(sims, reverse=True)
    # flat 64-vectors are reshaped to the zoo's input
    again = select_sources(
        use_zoo, "gram1", x.reshape(len(x), -1).numpy(), y.numpy(), k=4, exclude_tasks=["0 vs 1"]
    )
    assert again == by_model


def test_select_sources_rejects_bad_labels(use_zoo):
    x = np.zeros((4, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ParamsimError, match="0/1 label"):
        select_sources(use_zoo, "gram1", x, np.array([0, 0, 0, 0]))
    with pytest.raises(ParamsimError, match="do not fit"):
        select_sources(use_zoo, "gram1", np.zeros((4, 7)), np.array([0, 1, 0, 1]))


def test_confidence_interval():
    c = bootstrap_ci(np.full(10, 0.25), seed=0)
    assert c["lo"] == pytest.approx(0.25) and c["hi"] == pytest.approx(0.25)
    g = np.random.default_rng(0).normal(1.0, 0.1, 200)
    c = bootstrap_ci(g, seed=0)
    assert c["lo"] < 1.0 < c["hi"] and c["t_lo"] < c["mean"] < c["t_hi"]
    one = bootstrap_ci(np.array([0.07, np.nan]), seed=0)  # one task: no interval at all
    assert one["mean"] == pytest.approx(0.07) and one["n"] == 1
    assert all(np.isnan(one[b]) for b in ("lo", "hi", "t_lo", "t_hi"))


def test_config_validation():
    with pytest.raises(ParamsimError, match="shots"):
        TransferConfig(shots=(0,))
    with pytest.raises(ParamsimError, match="twice"):
        TransferConfig(shots=(1, 5, 1))
    with pytest.raises(ParamsimError, match="folds"):
        TransferConfig(folds=1)
    with pytest.raises(ParamsimError, match="head"):
        TransferConfig(head="x")
    with pytest.raises(ParamsimError, match="select"):
        TransferConfig(select="best")
    with pytest.raises(ParamsimError, match="finetune_steps"):
        TransferConfig(finetune_steps=-5)
    with pytest.raises(ParamsimError, match="memory budget"):
        TransferConfig(memory_budget_mb=1)


def test_write_transfer(gram1_results, tmp_path):
    written = write_transfer(gram1_results, tmp_path, key="abc")
    assert set(written) == {"transfer.json", "transfer.png", "transfer-matrices.npz"}
    assert "matrices" not in json.loads(written["transfer.json"].read_text())
    table = format_transfer_table(gram1_results)
    rows = table.splitlines()[2:]
    assert len(rows) == 2 and all("gram1" in r for r in rows)
    assert [r.split("|")[3].strip() for r in rows] == ["model", "task"]  # primary rule first


# Task 0 holds the single most similar model (0.9) but task 1 is the most similar on average
# (0.70 vs 0.50); task 2 is the probe's own task and is not a candidate.
HAND_SIM = np.array([0.9, 0.3, 0.3, 0.7, 0.8, 0.6, 1.0, 1.0, 1.0])
HAND_TASKS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
HAND_OK = HAND_TASKS != 2


def test_task_rule_picks_task_with_highest_mean_similarity():
    assert choose_source(HAND_SIM, HAND_TASKS, HAND_OK, "model") == 0
    assert choose_source(HAND_SIM, HAND_TASKS, HAND_OK, "task") == 4  # best model of task 1
    # top-1 mean is the single-model rule at task level: task 0 (0.9) wins again
    assert choose_source(HAND_SIM, HAND_TASKS, HAND_OK, "task", top=1) == 0
    # top-2 means: task 0 (0.6) < task 1 (0.75)
    assert choose_source(HAND_SIM, HAND_TASKS, HAND_OK, "task", top=2) == 4
    # relabelling the tasks or reordering the models does not change the pick
    perm = np.random.default_rng(0).permutation(len(HAND_SIM))
    got = choose_source(HAND_SIM[perm], (HAND_TASKS[perm] + 5) % 3, HAND_OK[perm], "task")
    assert perm[got] == 4
    with pytest.raises(ParamsimError, match="select"):
        choose_source(HAND_SIM, HAND_TASKS, HAND_OK, "best")


def test_both_rules_scored_from_the_same_finetunes(use_zoo, gram1_results):
    per = gram1_results["methods"]["gram1"]["shots"]["1"]
    assert per["select"] == "model" and set(per["rules"]) == {"task", "model"}
    assert per["chosen"] == per["rules"]["model"]["chosen"]
    base = gram1_results["baselines"]["1"]
    for rule in ("task", "model"):
        for task, acc in per["rules"][rule]["chosen"]["per_task"].items():
            assert acc <= base["oracle"]["per_task"][task] + 1e-12
    # a primary "task" config only relabels which rule is primary: the picks are the same
    again = evaluate_transfer(
        use_zoo,
        {"gram1": load_similarity(method="gram1")},
        TransferConfig(**QUICK, select="task"),
    )["methods"]["gram1"]["shots"]["1"]
    assert again["select"] == "task" and again["rules"] == per["rules"]
    assert again["chosen"] == per["rules"]["task"]["chosen"]


def test_matrices_give_the_reported_picks(use_zoo, gram1_results, tmp_path):
    """transfer-matrices.npz holds what the tables were computed from: each draw's most
    similar candidate by the saved scores is the reported source, and the oracle is the row
    maximum of the saved fine-tuned accuracies."""
    path = write_transfer(gram1_results, tmp_path)["transfer-matrices.npz"]
    with np.load(path) as m:
        ids, ft, S = m["model_ids"], m["finetuned"], m["score:gram1"]
    assert ft.shape == S.shape == (len(gram1_results["instances"]), len(use_zoo))
    assert np.array_equal(np.isnan(ft), np.isnan(S))  # NaN exactly off the candidates
    names = gram1_results["tasks"]
    per = gram1_results["methods"]["gram1"]["shots"]["1"]
    oracle = gram1_results["baselines"]["1"]["oracle"]["per_task"]
    tasks = {r.id: r.task.name for r in use_zoo.records}
    for j, inst in enumerate(gram1_results["instances"]):
        if inst["shots"] != 1:
            continue
        pick = int(ids[np.nanargmax(S[j])])  # a zoo id, not a column
        key = f"{inst['task']}#{inst['repeat']}"
        assert tuple(per["chosen_sources"][key]) == (pick, tasks[pick])
        assert inst["task"] in names
    best = {t: [] for t in oracle}
    for j, inst in enumerate(gram1_results["instances"]):
        if inst["shots"] == 1:
            best[inst["task"]].append(np.nanmax(ft[j]))
    for t, v in best.items():
        assert np.mean(v) == pytest.approx(oracle[t])


def test_a_zoo_with_a_swapped_twin_task_is_refused():
    from paramsim.data import Task
    from paramsim.use.transfer.evaluate import _refuse_swapped_duplicates

    _refuse_swapped_duplicates([Task(((0,), (1,))), Task(((0,), (2,)))])
    with pytest.raises(ParamsimError, match="'0 vs 1' and '1 vs 0'.*swapped"):
        _refuse_swapped_duplicates([Task(((0,), (1,))), Task(((1,), (0,)))])


def test_select_sources_remembers_a_transfer_runs_outcomes(use_zoo, gram1_results, tmp_path):
    """With the --out of a transfer run, the model order is hist:'s: a model that fine-tuned
    best to every past target comes first, though another is more similar."""
    from paramsim.use.transfer import TransferHistory

    run = tmp_path / "run"
    write_transfer(gram1_results, run)
    x, y = kshot(use_zoo.tasks[0], use_zoo.dataset(), 1, (1, 1, 0, 0))
    args = (use_zoo, "gram1", x.numpy(), y.numpy())
    plain = select_sources(*args, k=len(use_zoo), exclude_tasks=["0 vs 1"])
    got = select_sources(*args, k=3, exclude_tasks=["0 vs 1"], history=run)
    scores = [g["history_score"] for g in got]
    assert scores == sorted(scores, reverse=True)
    # a history in which the least similar model always fine-tuned best puts it first
    last = plain[-1]["model_id"]
    past = TransferHistory.load(run)
    col = list(past.model_ids).index(last)
    ft = np.where(np.isfinite(past.finetuned), 0.5, np.nan)
    ft[:, col] = 1.0
    rigged = TransferHistory(past.model_ids, past.target_tasks, past.shots, ft)
    top = select_sources(*args, k=1, exclude_tasks=["0 vs 1"], history=rigged)
    assert top[0]["model_id"] == last
    with pytest.raises(ParamsimError, match="transfer history"):
        select_sources(*args, history=tmp_path / "nothing-here")
    # an excluded task's own past outcomes never count: rigged to favour `last`, they are
    # dropped, the rest carry no preference, and the similarity's order stands
    own = np.array([t == "0 vs 1" for t in past.target_tasks])
    only_own = np.where(np.isfinite(past.finetuned), 0.5, np.nan)
    only_own[own, col] = 1.0
    rigged = TransferHistory(past.model_ids, past.target_tasks, past.shots, only_own)
    top = select_sources(*args, k=1, exclude_tasks=["0 vs 1"], history=rigged)
    assert own.any() and top[0]["model_id"] == plain[0]["model_id"]
    # a history of another zoo (a model of another task under the same id) is refused
    tasks = list(past.model_tasks)
    tasks[col] = "8 vs 9"
    alien = TransferHistory(past.model_ids, past.target_tasks, past.shots, ft, tuple(tasks))
    with pytest.raises(ParamsimError, match="another zoo"):
        select_sources(*args, history=alien)
    (run / "transfer-matrices.npz").write_bytes(b"PK\x03\x04" + bytes(64))  # damaged
    with pytest.raises(ParamsimError, match="cannot read a transfer history"):
        select_sources(*args, history=run)


def test_targets_are_matched_in_either_side_order(use_zoo):
    task = use_zoo.tasks[1]
    a, b = task.sides
    swapped = f"{'+'.join(map(str, b))} vs {'+'.join(map(str, a))}"
    sims = {"gram1": load_similarity(method="gram1")}
    res = evaluate_transfer(use_zoo, sims, TransferConfig(**QUICK, targets=(swapped,)))
    assert {i["task"] for i in res["instances"]} == {task.name}
    with pytest.raises(ParamsimError, match="unknown target tasks"):
        evaluate_transfer(use_zoo, sims, TransferConfig(**QUICK, targets=("7 vs 9",)))


def test_an_excluded_task_named_with_swapped_sides_is_dropped(use_zoo):
    """select_sources(exclude_tasks=...) drops a task's models whatever side order names it,
    as the history's exclusion and --targets do; a task the zoo lacks is an error."""
    from paramsim.use.transfer import kshot, select_sources

    x, y = kshot(use_zoo.tasks[0], use_zoo.dataset(), 5, (1, 5, 0, 0))
    assert use_zoo.tasks[0].name == "0 vs 1"
    for select in ("model", "task"):
        got = select_sources(
            use_zoo, "gram1", x.numpy(), y.numpy(), k=len(use_zoo),
            exclude_tasks=["1 vs 0"], select=select,
        )  # fmt: skip
        assert all(g["task"] != "0 vs 1" for g in got), select
        assert len(got) == len(use_zoo) - 3
    with pytest.raises(ParamsimError, match="exclude"):
        select_sources(use_zoo, "gram1", x.numpy(), y.numpy(), exclude_tasks=["0 vs 9"])


def test_a_failed_matrices_write_leaves_the_old_transfer_json(tmp_path, monkeypatch):
    """transfer.json (the cache key reproduce trusts, and what TransferHistory pairs with the
    matrices) is committed only after the matrices it describes."""
    from paramsim.use._common import read_cached
    from paramsim.use.transfer import write_transfer
    from paramsim.use.transfer.config import MATRICES, MATRICES_FILE

    def results(value: float) -> dict:
        return {
            "methods": {},
            "baselines": {},
            "instances": [{"task": "0 vs 1", "shots": 1, "repeat": 0, "scratch": 0.5}],
            MATRICES: {"model_ids": np.arange(2), "finetuned": np.full((1, 2), value)},
        }

    out = tmp_path / "transfer"
    write_transfer(results(0.1), out, key="old")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        write_transfer(results(0.9), out, key="new")
    assert read_cached(out / "transfer.json", "new") is None
    with np.load(out / MATRICES_FILE) as m:
        assert m["finetuned"][0, 0] == pytest.approx(0.1)
    assert json.loads((out / "transfer.json").read_text())["settings_key"] == "old"

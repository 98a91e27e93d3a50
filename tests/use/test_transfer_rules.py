"""Estimators, hybrids and the learned ranker as selection rules: what they see, how scored."""

import json

import numpy as np
import pytest
import torch

from paramsim.cli import main
from paramsim.errors import ParamsimError
from paramsim.use._common import load_similarity
from paramsim.use.transfer import (
    TransferConfig,
    estimate,
    evaluate_transfer,
    format_transfer_table,
    ranker,
)
from paramsim.use.transfer.metrics import score_rule, validation_pick
from paramsim.use.transfer.rules import hybrid_scores, parse_rule, parse_rules, split_rules
from paramsim.use.transfer.shots import Instance, kshot, validation_rows

QUICK = dict(shots=(1, 2), repeats=1, probe_steps=30, finetune_steps=10, costs=False)
RULES = ["knn", "logme", "leep", "gram1+knn@4", "rank:gram1", "hist:gram1"]


def test_rule_names():
    assert parse_rule("logme").kind == "estimator"
    h = parse_rule("lps+logme@25")
    assert (h.kind, h.base, h.estimator, h.m) == ("hybrid", "lps", "logme", 25)
    assert parse_rule("chain+knn").m == 10
    assert parse_rule("rank:chain").base == "chain"
    assert (parse_rule("hist:lps").kind, parse_rule("hist:lps").base) == ("history", "lps")
    assert [r.name for r in parse_rules(["hist:chain"])] == ["chain", "hist:chain"]
    nested = [r.name for r in parse_rules(["hist:lps+knn@5"])]
    assert nested == ["lps", "hist:lps", "knn", "hist:lps+knn@5"]
    assert [r.name for r in parse_rules(["chain+knn@5"])] == ["chain", "knn", "chain+knn@5"]
    for bad in [
        "chain+foo@3",
        "logme+knn@3",
        "chain+knn@0",
        "rank:",
        "rank:logme",
        "hist:knn",
        "hist:rank:lps",
    ]:
        with pytest.raises(ParamsimError):
            parse_rule(bad)
    assert split_rules("lps+logme@10", saved_lps=True) == ([], ["logme", "lps+logme@10"])
    assert split_rules("lps,lps+logme@10", saved_lps=True)[0] == ["lps"]
    with pytest.raises(ParamsimError, match="unknown method"):
        split_rules("nosuch,logme")


def test_hybrid_reranks_only_the_prefiltered_top():
    base = np.array([[0.9, 0.8, 0.7, 0.1, np.nan]])
    rerank = np.array([[0.0, 1.0, 0.5, 9.0, 9.0]])  # model 3 is best by rerank, but not in top 3
    order = np.argsort(-hybrid_scores(base, rerank, 3)[0][:4])
    assert order.tolist() == [1, 2, 0, 3]
    assert np.isnan(hybrid_scores(base, rerank, 3)[0, 4])
    ties = np.array([[1.0, 1.0, 0.0, 0.0, np.nan]])  # equal rerank: the base order decides
    assert np.argmax(hybrid_scores(base, ties, 3)[0][:4]) == 0


def _instances(n):
    return [Instance(0, 1, j, torch.zeros(2, 1), torch.tensor([0, 1])) for j in range(n)]


def test_tied_top_scores_count_as_their_mean_and_the_validation_oracle():
    labels = np.array([1, 1, 2, 2, 0])  # model 4 is of the target's own task
    ft = np.array([[0.6, 0.8, 0.7, 0.9, np.nan]])
    val = np.array([[0.9, 0.9, 0.1, 0.2, np.nan]])
    S = np.array([[1.0, 1.0, 0.5, 0.2, 5.0]])  # the own-task model is never a candidate
    cfg = TransferConfig(shots=(1,))
    res = score_rule(_instances(1), S, ft, val, labels, ["t0", "t1", "t2"], cfg)["1"]
    assert res["chosen"]["mean"] == pytest.approx(0.7)  # mean of the two tied at 1.0
    assert validation_pick(ft, val)[0] == pytest.approx(0.7)
    assert res["val_oracle_same_tasks"] == pytest.approx(0.7)
    assert res["regret"] == pytest.approx(0.2)
    # random 0.75, oracle 0.9: chosen 0.7 is -0.05 of a 0.15 headroom
    assert res["oracle_gain_captured"] == pytest.approx(-1 / 3)
    from scipy.stats import weightedtau

    expect = weightedtau([1.0, 1.0, 0.5, 0.2], [0.6, 0.8, 0.7, 0.9]).statistic
    assert res["weighted_tau"]["mean"] == pytest.approx(expect)
    assert res["chosen_sources"] == {"t0#0": (0, "t1")}  # the first of the tied top
    named = score_rule(_instances(1), S, ft, val, labels, ["t0", "t1", "t2"], cfg, [7, 3, 5, 9, 1])
    assert named["1"]["chosen_sources"] == {"t0#0": (7, "t1")}  # by the zoo's ids


def test_a_rule_without_information_scores_like_a_random_pick_under_both_rules():
    labels = np.array([1, 1, 2, 2, 3, 3, 0])
    ft = np.array([[0.6, 0.8, 0.7, 0.9, 0.5, 0.5, np.nan]])
    val = np.zeros_like(ft)
    S = np.ones_like(ft)  # every candidate and every task tied: no index order may decide
    cfg = TransferConfig(shots=(1,))
    res = score_rule(_instances(1), S, ft, val, labels, ["t0", "t1", "t2", "t3"], cfg)["1"]
    random_ = np.nanmean(ft)
    for rule in ("model", "task"):
        assert res["rules"][rule]["chosen"]["mean"] == pytest.approx(random_)
    # it ranks nothing: its tau and rho count as 0 on the draw, not as missing
    assert res["weighted_tau"]["mean"] == 0.0 and res["spearman"]["mean"] == 0.0
    # two tasks tied at the best mean: the task rule averages their top models (0.8, 0.7)
    S2 = np.array([[0.2, 1.0, 1.0, 0.2, 0.1, 0.1, 0.0]])
    res2 = score_rule(_instances(1), S2, ft, val, labels, ["t0", "t1", "t2", "t3"], cfg)["1"]
    assert res2["rules"]["task"]["chosen"]["mean"] == pytest.approx(0.75)
    # tied means, unequal spreads: a tied task at random, then its top model(s), not the
    # top model of the union (which would favour the task whose scores spread widest)
    S3 = np.array([[1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.0]])
    res3 = score_rule(_instances(1), S3, ft, val, labels, ["t0", "t1", "t2", "t3"], cfg)["1"]
    assert res3["rules"]["task"]["chosen"]["mean"] == pytest.approx((0.6 + (0.7 + 0.9) / 2) / 2)


def test_a_draw_whose_candidates_all_fine_tune_alike_is_left_out_of_the_ranking():
    labels = np.array([1, 1, 2, 0])
    ft = np.array([[0.7, 0.7, 0.7, np.nan], [0.6, 0.8, 0.7, np.nan]])
    S = np.array([[0.1, 0.5, 0.9, 0.0], [0.1, 0.5, 0.9, 0.0]])
    cfg = TransferConfig(shots=(1,))
    res = score_rule(_instances(2), S, ft, np.zeros_like(ft), labels, ["t0", "t1", "t2"], cfg)
    from scipy.stats import weightedtau

    # one task, two draws: the flat draw drops out, the mean is the other draw's tau
    expect = weightedtau(S[1, :3], ft[1, :3]).statistic
    assert res["1"]["weighted_tau"]["mean"] == pytest.approx(expect)


def test_validation_rows_avoid_the_shots(use_zoo):
    ds = use_zoo.dataset()
    task = use_zoo.tasks[2]
    x, y = kshot(task, ds, 5, (0, 5, 0, 2))
    from paramsim.use.transfer.shots import kshot_rows

    shots = kshot_rows(task, ds, 5, (0, 5, 0, 2))
    rows, side = validation_rows(task, ds, shots, 20, (0, 1))
    assert not set(rows) & set(shots) and len(rows) == 40
    assert np.bincount(side).tolist() == [20, 20]
    assert torch.equal(ds.x_train[torch.as_tensor(shots)], x)


@pytest.fixture(scope="module")
def rule_results(use_zoo):
    sims = {"gram1": load_similarity(method="gram1")}
    return evaluate_transfer(use_zoo, sims, TransferConfig(**QUICK), selectors=RULES)


def test_every_rule_is_scored_with_the_new_metrics(rule_results):
    methods = rule_results["methods"]
    assert set(methods) == {"gram1", *RULES}
    kinds = {m["kind"] for m in methods.values()}
    assert kinds == {"similarity", "estimator", "hybrid", "learned", "history"}
    for k in ("1", "2"):
        base = rule_results["baselines"][k]
        assert base["val_oracle"]["mean"] <= base["oracle"]["mean"] + 1e-12
        best = max(
            (n for n, m in methods.items() if m["kind"] == "estimator"),
            key=lambda n: methods[n]["shots"][k]["chosen"]["mean"],
        )
        for m in methods.values():
            v = m["shots"][k]
            assert v["vs_best_estimator"]["estimator"] == best
            assert v["regret"] == pytest.approx(v["oracle_same_tasks"] - v["chosen"]["mean"])
            assert -1 <= v["weighted_tau"]["mean"] <= 1
        assert methods[best]["shots"][k]["vs_best_estimator"]["mean"] == 0.0
    table = format_transfer_table(rule_results)
    assert "(best estimator)" in table and "rank:gram1" in table and "hist:gram1" in table
    from paramsim.use.transfer import estimator_notes

    notes = "\n".join(estimator_notes(rule_results))
    assert "`hist:gram1` (history): gram1 mixed" in notes and "`gram1+knn@4` (hybrid)" in notes


def test_same_seed_same_results(use_zoo, rule_results):
    again = evaluate_transfer(
        use_zoo,
        {"gram1": load_similarity(method="gram1")},
        TransferConfig(**QUICK, memory_budget_mb=16),  # smaller chunks, same numbers
        selectors=RULES,
    )
    assert again["baselines"] == rule_results["baselines"]
    for name in rule_results["methods"]:
        assert again["methods"][name]["shots"] == rule_results["methods"][name]["shots"]


def test_no_estimator_sees_anything_but_the_shots(use_zoo, monkeypatch):
    seen = []
    real = estimate.source_outputs

    def recording(models, x):
        seen.append(x.clone())
        return real(models, x)

    monkeypatch.setattr(estimate, "source_outputs", recording)
    cfg = TransferConfig(**{**QUICK, "shots": (2,)})
    res = evaluate_transfer(use_zoo, {}, cfg, selectors=["logme"])
    ds = use_zoo.dataset()
    shots = [kshot(use_zoo.tasks[t], ds, 2, (0, 2, 0, t))[0] for t in range(len(use_zoo.tasks))]
    assert seen and all(any(torch.equal(x, s) for s in shots) for x in seen)
    assert all(any(torch.equal(x, s) for x in seen) for s in shots)  # every draw was scored
    test_x = ds.x_test.reshape(len(ds.x_test), -1)
    for x in seen:  # and no row is a test example
        d = torch.cdist(x.reshape(len(x), -1), test_x)
        assert float(d.min()) > 0
    assert res["methods"]["logme"]["shots"]["2"]["n_target_tasks"] == len(use_zoo.tasks)


def test_ranker_never_trains_on_its_targets_fold(use_zoo, monkeypatch):
    fits = []
    real = ranker.fit_ranker

    def recording(data, **kw):
        fits.append((set(data.target_tasks), set(data.source_tasks), data.accuracy.shape))
        return real(data, **kw)

    monkeypatch.setattr(ranker, "fit_ranker", recording)
    cfg = TransferConfig(**QUICK, folds=3)
    res = evaluate_transfer(use_zoo, {}, cfg, selectors=["rank:gram1"])
    folds = res["folds"]
    assert len(fits) == 3
    for f, (targets, sources, shape) in enumerate(fits):
        held = {t for t, g in folds.items() if g == f}
        assert held and not (held & targets) and not (held & sources)
        assert targets | held == set(res["tasks"])
        assert shape[1] == 3 * len(sources)  # three models per source task
    assert res["methods"]["rank:gram1"]["shots"]["1"]["n_target_tasks"] == len(use_zoo.tasks)


def test_transfer_cli_with_estimators_and_costs(use_zoo, tmp_path, capsys):
    out = tmp_path / "tr"
    rules = "gram1,knn,gram1+knn@3,hist:gram1,hist:gram1+knn@3"
    args = ["transfer", str(use_zoo.path), "--methods", rules, "--shots", "1"]
    args += ["--repeats", "1", "--finetune-steps", "5", "--memory-budget", "64", "--out", str(out)]
    args += ["--sources-per-task", "2"]
    assert main(args) == 0
    doc = json.loads((out / "transfer.json").read_text())
    assert doc["n_candidate_pairs"] == 6 * 5 * 2  # 6 draws x 5 other tasks x 2 models
    assert doc["costs"]["draw"]["candidates"] == 10
    costs = doc["costs"]["rules"]
    assert costs["knn"]["forward_passes"][-1] == doc["costs"]["draw"]["candidates"]
    assert costs["gram1"]["forward_passes"] == [0, 0, 0] and costs["gram1"]["probe_ms"] > 0
    assert costs["gram1+knn@3"]["forward_passes"][-1] == 3
    assert costs["hist:gram1"]["forward_passes"] == [0, 0, 0]
    assert costs["hist:gram1+knn@3"]["forward_passes"][-1] == 3  # a history prefilter, timed
    assert "ms per 1000 candidates" in capsys.readouterr().out
    assert main([*args[:3], "gram1+nope@3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "hybrid" in err and len(err.strip().splitlines()) == 1


def test_source_subset_keeps_the_same_models_of_every_task():
    from paramsim.use.transfer.evaluate import source_subset

    labels = np.repeat(np.arange(4), 5)
    keep = source_subset(labels, 2, seed=0)
    assert np.bincount(labels[keep]).tolist() == [2, 2, 2, 2]
    assert np.array_equal(keep, source_subset(labels, 2, seed=0))
    assert not np.array_equal(keep, source_subset(labels, 2, seed=1))
    assert source_subset(labels, 0, seed=0).all() and source_subset(labels, 9, seed=0).all()


def test_similarity_over_the_budget_goes_through_a_disk_index(use_zoo, monkeypatch):
    from paramsim.features import get_method
    from paramsim.features.base import Context
    from paramsim.use._common import cross_similarity
    from paramsim.use.transfer.similarity import disk_index_similarity, embedding_width

    def no_map(*args, **kwargs):  # a mapped index counts every page read as resident
        raise AssertionError("the index must be read, not memory-mapped")

    monkeypatch.setattr(np, "memmap", no_map)
    monkeypatch.setattr(np.lib.format, "open_memmap", no_map)
    nets = use_zoo.networks()
    method, ctx = get_method("chain"), Context(seed=0)
    width = embedding_width(method, nets, ctx)
    tiny = 3 * width * 8  # room for three embeddings: chunks of one
    got = disk_index_similarity(method, nets[:4], nets[4:], ctx, tiny)
    np.testing.assert_allclose(got, cross_similarity(method, nets[:4], nets[4:], ctx), atol=1e-12)


def test_history_remembers_what_transferred_to_similar_past_targets():
    """Two past targets: A (where source 1 fine-tuned best) and B (source 2 best). A new draw
    whose probe is closest to A's models picks source 1 although the similarity alone prefers
    source 2; with no history weight it is the similarity's pick."""
    from paramsim.use.transfer.history import history_scores

    model_tasks = ["A", "B", "C", "C"]  # models 0 and 1 of A and B; 2, 3 of task C
    ft = np.array(
        [
            [np.nan, 0.5, 0.9, 0.6],  # past draw of A: source 2 best
            [0.5, np.nan, 0.6, 0.9],  # past draw of B: source 3 best
            [np.nan] * 4,  # the new draw: never read
        ]
    )
    base = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0.9, 0.1, 0.3, 0.4]])
    allowed = np.array([[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=bool)
    past, new = [0, 1], [2]

    def scores(neighbours, weight):
        return history_scores(
            base[new],
            allowed[new],
            ft[past],
            allowed[past],
            ["A", "B"],
            model_tasks,
            ["new"],
            neighbours,
            weight,
        )

    got = scores(1, 0.7)[0]
    assert np.argmax(got) == 2  # A's best, though model 3 is more similar than model 2
    plain = scores(1, 0.0)
    assert np.argmax(plain[0]) == 0
    both = scores(2, 1.0)
    assert both[0, 2] == pytest.approx(both[0, 3])  # A and B disagree: a tie


def test_history_never_reads_its_targets_folds_outcomes(rule_results, use_zoo):
    """Scores of a fold's draws do not move when that fold's fine-tuned accuracies do."""
    from paramsim.use.transfer.evaluate import _history_scores

    rng = np.random.default_rng(0)
    names = rule_results["tasks"]
    fold = rule_results["folds"]
    labels = use_zoo.task_ids
    instances = [
        Instance(names.index(i["task"]), i["shots"], i["repeat"], torch.zeros(1), torch.zeros(1))
        for i in rule_results["instances"]
    ]
    n = len(use_zoo)
    own = np.array([[labels[m] == inst.task_id for m in range(n)] for inst in instances])
    base = rng.random((len(instances), n))
    ft = np.where(own, np.nan, rng.random(own.shape))
    S = _history_scores(base, ft, ~own, instances, labels, names, fold)
    for f in set(fold.values()):
        rows = [j for j, i in enumerate(instances) if fold[names[i.task_id]] == f]
        changed = ft.copy()
        changed[rows] = np.where(own[rows], np.nan, rng.random((len(rows), n)))
        again = _history_scores(base, changed, ~own, instances, labels, names, fold)
        assert np.array_equal(again[rows], S[rows], equal_nan=True)
        assert not np.allclose(np.delete(again, rows, 0), np.delete(S, rows, 0), equal_nan=True)


def test_hybrid_reranks_the_top_candidates_not_unpickable_models(rule_results):
    """The M slots of gram1+knn@4 go to the 4 candidates gram1 ranks highest, ordered by knn:
    the target's own models (most similar to its probe) never take a slot."""
    m = rule_results["matrices"]
    base, knn, hybrid = m["score:gram1"], m["score:knn"], m["score:gram1+knn@4"]
    checked = 0
    for j in range(len(base)):
        ok = np.flatnonzero(np.isfinite(base[j]))
        top = ok[np.argsort(-base[j, ok], kind="stable")][:4]
        by_hybrid = top[np.argsort(-hybrid[j, top])]
        assert set(ok[np.argsort(-hybrid[j, ok])][:4]) == set(top)
        assert np.all(np.diff(knn[j, by_hybrid]) <= 0)  # the 4 in knn's order
        checked += len(set(knn[j, top])) > 1
    assert checked  # some draw where knn reorders the four

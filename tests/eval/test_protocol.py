import numpy as np
import pytest
from eval_helpers import (
    TASKS,
    BrokenFit,
    FakeZoo,
    FlatMethod,
    NeedsCNN,
    NeedsPackage,
    NoiseMethod,
    RecordingLearned,
)

from paramsim.errors import ParamsimError
from paramsim.eval import evaluate, evaluate_zoo, index_tasks, make_splits
from paramsim.features.adapter import as_method
from paramsim.features.base import Context

LABELS = np.repeat(np.arange(10), 5)


def test_splits_are_by_task_seeded_and_disjoint():
    splits = make_splits(LABELS, n_splits=4, seed=3)
    assert make_splits(LABELS, n_splits=4, seed=3) == splits
    assert make_splits(LABELS, n_splits=4, seed=4) != splits
    assert len({sp.test_tasks for sp in splits}) > 1  # repeated splits differ
    for sp in splits:
        assert len(sp.test_tasks) == 4 and len(sp.val_tasks) == 1 and len(sp.train_tasks) == 5
        assert not set(sp.test_tasks) & (set(sp.train_tasks) | set(sp.val_tasks))
        assert set(LABELS[list(sp.test_ids)]) == set(sp.test_tasks)
        assert set(LABELS[list(sp.val_ids)]) == set(sp.val_tasks)
        assert set(LABELS[list(sp.train_ids + sp.seen_ids)]) == set(sp.train_tasks)
        assert not set(sp.train_ids) & set(sp.seen_ids)
        # every model of a training task is either training or seen-task test (2 of 5)
        assert len(sp.seen_ids) == 2 * len(sp.train_tasks)
        assert sp.query_ids == sp.gallery_ids == sp.test_ids
        assert sp.seed == 3


def test_query_gallery_option():
    for sp in make_splits(LABELS, n_splits=2, n_queries=2, seen_fraction=0):
        assert not set(sp.query_ids) & set(sp.gallery_ids)
        assert set(sp.query_ids) | set(sp.gallery_ids) == set(sp.test_ids)
        assert len(sp.query_ids) == 2 * len(sp.test_tasks)
        assert sp.seen_ids == ()


@pytest.mark.parametrize(
    "kwargs",
    [{"n_splits": 0}, {"test_fraction": 1.0}, {"val_fraction": -0.1}, {"n_queries": 0}],
)
def test_bad_split_arguments(kwargs):
    with pytest.raises(ParamsimError):
        make_splits(LABELS, **kwargs)


def test_too_few_tasks():
    with pytest.raises(ParamsimError, match="at least 3 tasks"):
        make_splits([0, 0, 1, 1])


@pytest.fixture
def setup(synth):
    nets, model_tasks = synth
    labels, _ = index_tasks(model_tasks)
    return nets, model_tasks, make_splits(labels, n_splits=3, seed=0, test_fraction=0.5)


def test_evaluate_scores_fixed_methods(setup):
    nets, model_tasks, splits = setup
    methods = {"flat": FlatMethod(), "noise": NoiseMethod(), "cnn": NeedsCNN()}
    calls = []
    res = evaluate(
        nets,
        model_tasks,
        methods,
        splits,
        Context(seed=1),
        progress=lambda n, i: calls.append((n, i)),
    )
    assert len(calls) == 3 * len(splits)
    assert res["skipped"] == {"cnn": "needs convolutional networks"}
    flat, noise = res["methods"]["flat"], res["methods"]["noise"]
    for key in ("map", "rank1", "rank5", "rank10", "auc", "relation_spearman"):
        assert set(flat[key]) == {"mean", "std"}
    assert flat["map"]["mean"] > 0.95 and flat["auc"]["mean"] > 0.95
    assert flat["classification"]["mean"] == 1.0
    assert noise["map"]["mean"] < 0.7
    assert len(flat["per_split"]) == 3 and flat["weights_only"] is True
    assert flat["set_dependent"] is False
    # the timing fields add up: one similarity over all models, no fit
    assert flat["fit_seconds"] == 0 and flat["seconds"] == flat["similarity_seconds"]
    assert flat["models_per_s"] * flat["similarity_seconds"] == pytest.approx(len(nets))
    assert res["splits"] == 3 and res["seed"] == 0
    ex = flat["task_similarity"]
    assert len(ex["tasks"]) == len(splits[0].test_tasks) == len(ex["relation"])


def test_fixed_fast_path_equals_heldout(setup):
    nets, model_tasks, splits = setup
    a = evaluate(nets, model_tasks, [FlatMethod()], splits)["methods"]["flat-test"]
    b = evaluate(nets, model_tasks, [FlatMethod()], splits, fixed_mode="heldout")
    b = b["methods"]["flat-test"]
    for key in ("map", "rank1", "auc", "relation_spearman", "classification"):
        assert a[key]["mean"] == pytest.approx(b[key]["mean"])


def test_learned_method_never_sees_held_out_tasks(setup):
    nets, model_tasks, splits = setup
    RecordingLearned.fits.clear()
    proto = RecordingLearned()
    res = evaluate(nets, model_tasks, {"learned": proto}, splits, strict=True)
    assert not proto.fitted  # the prototype itself is never fitted
    assert len(RecordingLearned.fits) == len(splits)
    _, tasks = index_tasks(model_tasks)
    for sp, fit in zip(splits, RecordingLearned.fits, strict=True):
        held_out = {tasks[t] for t in sp.test_tasks}
        assert not held_out & (fit["train"] | fit["val"])
        assert fit["val"] == {tasks[t] for t in sp.val_tasks}
        assert fit["n"] == len(sp.train_ids)
    fixed = evaluate(nets, model_tasks, [FlatMethod()], splits)["methods"]["flat-test"]
    learned = res["methods"]["learned"]
    assert learned["learned"] is True
    # same embedding, same held-out models -> the same scores as the fixed version
    assert learned["map"]["mean"] == pytest.approx(fixed["map"]["mean"])
    # learned: fitted once per split, similarity per split on held-out and training models
    assert learned["fit_seconds"] > 0
    assert learned["seconds"] == pytest.approx(
        learned["fit_seconds"] + learned["similarity_seconds"]
    )
    embedded = sum(len(set(sp.test_ids + sp.train_ids + sp.seen_ids)) for sp in splits)
    assert learned["models_per_s"] * learned["similarity_seconds"] == pytest.approx(embedded)


def test_error_inside_a_method_propagates_instead_of_a_skip(setup):
    nets, model_tasks, splits = setup

    class Broken(FlatMethod):
        def embed(self, networks, context):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        evaluate(nets, model_tasks, {"broken": Broken()}, splits)


def test_error_inside_fit_propagates(setup):
    nets, model_tasks, splits = setup
    with pytest.raises(ZeroDivisionError):
        evaluate(nets, model_tasks, {"bad": BrokenFit()}, splits)


def test_missing_third_party_package_is_a_skip_but_a_missing_paramsim_module_is_not(setup):
    nets, model_tasks, splits = setup
    res = evaluate(nets, model_tasks, {"needs": NeedsPackage("nosuchpkg_xyz")}, splits)
    assert res["methods"] == {}
    assert "nosuchpkg_xyz" in res["skipped"]["needs"]
    with pytest.raises(ModuleNotFoundError):
        evaluate(nets, model_tasks, {"needs": NeedsPackage("nosuchpkg_xyz")}, splits, strict=True)
    with pytest.raises(ModuleNotFoundError):  # a broken install of our own code surfaces
        evaluate(nets, model_tasks, {"needs": NeedsPackage("paramsim.nosuch")}, splits)


def test_wrong_similarity_shape_raises(setup):
    nets, model_tasks, splits = setup

    class Wrong(FlatMethod):
        def similarity(self, networks, context):
            return np.zeros((2, 2))

    with pytest.raises(ValueError, match="shape"):
        evaluate(nets, model_tasks, {"wrong": Wrong()}, splits)


def test_check_reason_is_a_skip_unless_strict(setup):
    nets, model_tasks, splits = setup
    res = evaluate(nets, model_tasks, {"cnn": NeedsCNN()}, splits)
    assert res["skipped"] == {"cnn": "needs convolutional networks"}
    with pytest.raises(ParamsimError, match="needs convolutional"):
        evaluate(nets, model_tasks, {"cnn": NeedsCNN()}, splits, strict=True)


def test_mismatched_inputs(setup):
    nets, model_tasks, splits = setup
    with pytest.raises(ParamsimError):
        evaluate(nets[:-1], model_tasks, [FlatMethod()], splits)


def test_evaluate_zoo_takes_method_objects_and_reports_skipped_names():
    res = evaluate_zoo(
        FakeZoo(),
        [FlatMethod()],
        n_splits=2,
        seed=5,
        skipped={"absent-test": "needs a package that is not installed"},
        order=["absent-test", "flat-test"],
    )
    assert res["zoo"] == "fake-zoo" and res["splits"] == 2 and res["seed"] == 5
    assert res["methods"]["flat-test"]["map"]["mean"] > 0.95
    assert res["skipped"] == {"absent-test": "needs a package that is not installed"}
    assert res["method_order"] == ["absent-test", "flat-test"]


class DuckLearned:
    """Not a Method: fit without context, embed without context (like an external class)."""

    def __init__(self):
        self.seen_val = None

    def fit(self, networks, tasks, val=None):
        self.seen_val = val
        return self

    def embed(self, networks):
        return FlatMethod().embed(networks, Context())


def test_adapter_wraps_duck_typed_learned_methods(setup):
    nets, model_tasks, splits = setup
    m = as_method(DuckLearned(), "duck")
    assert m.learned and m.weights_only and m.name == "duck"
    res = evaluate(nets, model_tasks, {"duck": m}, splits, strict=True)
    flat = evaluate(nets, model_tasks, [FlatMethod()], splits)["methods"]["flat-test"]
    assert res["methods"]["duck"]["map"]["mean"] == pytest.approx(flat["map"]["mean"])
    assert m.obj.seen_val is None  # the prototype stayed unfitted; copies were fitted


class DuckNoVal:
    """Not a Method, and its fit has no `val`: validation tasks must join its training set."""

    fits: list[set] = []

    def fit(self, networks, tasks):
        DuckNoVal.fits.append(set(tasks))

    def embed(self, networks):
        return FlatMethod().embed(networks, Context())


def test_adapter_without_val_trains_on_validation_tasks(setup):
    nets, model_tasks, splits = setup
    DuckNoVal.fits.clear()
    evaluate(nets, model_tasks, {"duck": as_method(DuckNoVal(), "duck")}, splits)
    _, tasks = index_tasks(model_tasks)
    for sp, fit in zip(splits, DuckNoVal.fits, strict=True):
        assert fit == {tasks[t] for t in sp.train_tasks + sp.val_tasks}


def test_a_task_with_its_sides_swapped_is_the_same_task():
    from paramsim.data import Task

    a, flipped, other = Task(((0,), (1,))), Task(((1,), (0,))), Task(((2,), (3,)))
    labels, tasks = index_tasks([a, flipped, other, a])
    assert labels.tolist() == [0, 0, 1, 0] and tasks == [a, other]


def test_evaluate_zoo_keeps_a_task_and_its_swapped_twin_on_one_side(monkeypatch):
    """A zoo holding "0 vs 1" and "1 vs 0" as two registry tasks (built before recipes refused
    it) must never train on one and hold out the other."""
    import paramsim.eval.on_zoo as on_zoo
    from paramsim.data import Task
    from paramsim.data.tasks import task_key

    drawn = []

    def recording(labels, **kw):
        drawn.extend(make_splits(labels, **kw))
        return drawn[-kw["n_splits"] :]

    monkeypatch.setattr(on_zoo, "make_splits", recording)
    zoo = FakeZoo([*TASKS, Task(((1,), (0,)))], per_task=2)
    RecordingLearned.fits.clear()
    evaluate_zoo(zoo, [RecordingLearned()], n_splits=4, seed=1)
    assert len(drawn) == len(RecordingLearned.fits) == 4
    model_keys = [task_key(zoo.tasks[int(t)]) for t in zoo.task_ids]
    for split, fit in zip(drawn, RecordingLearned.fits, strict=True):
        held = {model_keys[i] for i in split.test_ids}
        assert held and not held & {task_key(t) for t in fit["train"] | fit["val"]}
    RecordingLearned.fits.clear()

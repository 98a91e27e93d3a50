"""The --extra-zoo leak guard: per split, extra models of held-out or validation tasks, and
copies of the zoo's own withheld models, never reach a learned method's fit."""

import pytest
import torch
from eval_helpers import RecordingLearned, synthetic_networks

from paramsim.data import Task, task_key
from paramsim.eval import evaluate, index_tasks, make_splits
from paramsim.eval.extra import ExtraModels, allowed_extra, network_digest
from paramsim.weights import Layer, Network

PAIRS = [Task(((a,), (b,))) for a, b in [(0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (6, 7), (4, 6)]]
GROUPS = [Task(((0, 1), (2,))), Task(((3,), (4, 5, 6)))]


def _copy(net: Network) -> Network:
    """The same model as a separate object (as if read from another zoo)."""
    layers = tuple(
        Layer(la.kind, la.weight.clone(), la.bias.clone(), la.padding, la.post) for la in net.layers
    )
    return Network(layers, net.input_shape, net.input_ops)


@pytest.fixture
def zoo():
    nets, model_tasks = synthetic_networks(PAIRS, per_task=3, seed=1)
    labels, _ = index_tasks(model_tasks)
    return nets, model_tasks, make_splits(labels, n_splits=3, seed=0)


def test_extra_models_of_held_out_and_validation_tasks_never_train(zoo):
    nets, model_tasks, splits = zoo
    # new models of every zoo task (half of them with the sides swapped) and two group tasks
    flipped = [Task((t.sides[1], t.sides[0])) if i % 2 else t for i, t in enumerate(PAIRS)]
    extra_nets, extra_tasks = synthetic_networks([*flipped, *GROUPS], per_task=2, seed=9)
    extra = ExtraModels(extra_nets, extra_tasks, "test")
    RecordingLearned.fits.clear()
    res = evaluate(nets, model_tasks, [RecordingLearned()], splits, strict=True, extra=extra)
    _, tasks = index_tasks(model_tasks)
    assert len(RecordingLearned.fits) == len(splits)
    for sp, fit in zip(splits, RecordingLearned.fits, strict=True):
        barred = {task_key(tasks[t]) for t in (*sp.test_tasks, *sp.val_tasks)}
        trained = {task_key(t) for t in fit["train"]}
        assert not barred & trained
        assert {task_key(t) for t in GROUPS} <= trained  # extra tasks that are new do train
        allowed = [t for t in extra_tasks if task_key(t) not in barred]
        assert fit["n"] == len(sp.train_ids) + len(allowed)
    assert res["extra"]["kept_per_split"] == [
        f["n"] - len(s.train_ids) for s, f in zip(splits, RecordingLearned.fits, strict=True)
    ]


def test_copies_of_the_zoos_withheld_models_never_train(zoo):
    nets, model_tasks, splits = zoo
    # the zoo itself given again as the extra zoo, but relabelled as tasks no split bars, so
    # only the model-identity guard can stop the withheld ones
    relabelled = [Task(((8,), (9,)))] * len(nets)
    extra = ExtraModels([_copy(n) for n in nets], relabelled, "same zoo")
    RecordingLearned.fits.clear()
    evaluate(nets, model_tasks, [RecordingLearned()], splits, strict=True, extra=extra)
    digests = [network_digest(n) for n in nets]
    for sp, fit in zip(splits, RecordingLearned.fits, strict=True):
        withheld = {digests[i] for i in (*sp.test_ids, *sp.val_ids, *sp.seen_ids)}
        assert sp.seen_ids and sp.test_ids and sp.val_ids
        assert not withheld & set(fit["digests"])
        # the copies of training models are not withheld and do train
        assert fit["n"] == 2 * len(sp.train_ids)


def test_allowed_extra_rules():
    nets, tasks = synthetic_networks([PAIRS[0], GROUPS[0], PAIRS[3]], per_task=1)
    extra = ExtraModels(nets, tasks)
    assert allowed_extra(extra, exclude_tasks=[Task(((1,), (0,)))]) == [1, 2]
    assert allowed_extra(extra, exclude_tasks=[], exclude_classes=[2]) == [0, 2]
    assert allowed_extra(extra, exclude_tasks=[], withheld={network_digest(nets[2])}) == [0, 1]
    other = Network(
        tuple(
            Layer(la.kind, la.weight + 1e-3, la.bias, la.padding, la.post) for la in nets[2].layers
        ),
        nets[2].input_shape,
        nets[2].input_ops,
    )
    assert network_digest(other) != network_digest(nets[2])
    assert torch.equal(_copy(nets[2]).layers[0].weight, nets[2].layers[0].weight)


# --- models LPS adds by itself (its auxiliary zoo, its own extra_zoo) obey the split too

FAST = dict(epochs=1, patience=1, tasks_per_batch=4, models_per_task=2, min_batches=1)
SMALL = dict(emb_dim=8, rank=8, n_probes=4, set_hidden=8)
GROUP = Task(((1, 2), (3,)))  # the zoo's one group task
SMALL_PAIRS = [Task(((a,), (b,))) for a, b in [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]]


def _spy_on_extras(monkeypatch) -> list[list[Task]]:
    """The extra tasks each LPS fit keeps, as `filter_extra` returns them."""
    import paramsim.lps.fit as lps_fit

    kept: list[list[Task]] = []
    real = lps_fit.filter_extra

    def spy(extra_tasks, train_tasks, exclude):
        keep = real(extra_tasks, train_tasks, exclude)
        kept.append([extra_tasks[i] for i in keep])
        return keep

    monkeypatch.setattr(lps_fit, "filter_extra", spy)
    return kept


def test_a_held_out_group_task_never_trains_lps_through_its_auxiliary_zoo(monkeypatch):
    """A held-out task that is the only one of its shape: its twin among the auxiliary group
    tasks must not train the metric (the protocol names the held-out tasks to LPS)."""
    import paramsim.lps.method as lps_method
    from paramsim.features.base import Context
    from paramsim.lps import FitConfig, LPSMethod
    from paramsim.lps.material import FitMaterial

    torch.set_num_threads(1)
    nets, model_tasks = synthetic_networks([*SMALL_PAIRS, GROUP], per_task=3, seed=0)
    # what a built auxiliary zoo holds: the same group task, sides in the other order
    twin = Task(((3,), (1, 2)))
    aux_nets, aux_tasks = synthetic_networks([twin], per_task=2, seed=5)
    monkeypatch.setattr(
        lps_method,
        "zoo_material",
        lambda *a, **k: FitMaterial(list(aux_nets), list(aux_tasks), None),
    )
    kept = _spy_on_extras(monkeypatch)
    labels, tasks = index_tasks(model_tasks)
    group_label = tasks.index(GROUP)
    splits = [s for s in make_splits(labels, n_splits=8, seed=0) if group_label in s.test_tasks]
    assert splits, "no split holds out the group task"
    fc = FitConfig(**FAST, aux_tasks=4, aux_models_per_task=2)
    evaluate(
        nets,
        model_tasks,
        {"lps": LPSMethod("lps", fc, **SMALL)},
        splits[:1],
        Context(zoo="/nonexistent-zoo", seed=0),
        strict=True,
    )
    assert kept, "LPS fit did not run"
    leaked = [t for t in kept[0] if task_key(t) == task_key(GROUP)]
    assert not leaked, f"held-out task {GROUP.name} trained LPS via {len(leaked)} aux models"


def test_lps_extra_zoo_never_trains_on_a_held_out_class(monkeypatch):
    """`LPSMethod(extra_zoo=...)` models keep to the training tasks' classes, as the
    auxiliary zoo does."""
    import paramsim.lps.method as lps_method
    from paramsim.eval import make_class_splits
    from paramsim.features.base import Context
    from paramsim.lps import FitConfig, LPSMethod

    torch.set_num_threads(1)
    nets, model_tasks = synthetic_networks(SMALL_PAIRS, per_task=3, seed=0)
    groups = [Task(((0, 1), (2,))), Task(((1,), (2, 3))), Task(((0,), (1, 3)))]
    g_nets, g_tasks = synthetic_networks(groups, per_task=2, seed=4)
    monkeypatch.setattr(lps_method, "zoo_training_set", lambda path: (g_nets, g_tasks))
    kept = _spy_on_extras(monkeypatch)
    splits = make_class_splits(model_tasks, n_splits=1, seed=0, n_classes_out=1)
    fc = FitConfig(**FAST, aux_tasks=0)
    evaluate(
        nets,
        model_tasks,
        {"lps": LPSMethod("lps", fc, extra_zoo="/some/groups-zoo", **SMALL)},
        splits,
        Context(seed=0),
        strict=True,
    )
    held = set(splits[0].heldout_classes)
    leaked = [t.name for t in kept[0] if t.classes & held]
    assert not leaked, f"extra tasks {leaked} touch held-out class {held}"

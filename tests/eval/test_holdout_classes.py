"""The held-out-classes protocol: held-out tasks touch K held-out classes, and no training,
validation or extra task that reaches a learned method touches them."""

import itertools
import json

import pytest
from eval_helpers import FakeZoo, RecordingLearned, synthetic_networks

import paramsim.zoo
from paramsim.cli import main
from paramsim.data import Task
from paramsim.errors import ParamsimError
from paramsim.eval import evaluate, index_tasks, make_class_splits
from paramsim.eval.extra import ExtraModels

PAIRS10 = [Task(((a,), (b,))) for a, b in itertools.combinations(range(10), 2)]
PAIRS6 = [Task(((a,), (b,))) for a, b in itertools.combinations(range(6), 2)]


def test_class_splits_hold_out_every_task_of_the_held_out_classes():
    model_tasks = [t for t in PAIRS10 for _ in range(2)]
    splits = make_class_splits(model_tasks, n_splits=5, seed=0)
    assert make_class_splits(model_tasks, n_splits=5, seed=0) == splits
    _, tasks = index_tasks(model_tasks)
    assert len({sp.heldout_classes for sp in splits}) == 5  # a different class set per split
    for sp in splits:
        held = set(sp.heldout_classes)
        assert len(held) == 2 and sp.holdout == "classes"  # default: 2 of 10 classes
        touching = {i for i, t in enumerate(tasks) if t.classes & held}
        assert set(sp.test_tasks) == touching and len(touching) == 17  # 8 + 8 + 1 pairs
        assert not touching & set(sp.train_tasks + sp.val_tasks)
        assert len(sp.train_tasks) + len(sp.val_tasks) == 45 - 17
        assert len(sp.val_tasks) == round(0.2 * 28)
        assert {model_tasks[i] for i in sp.train_ids + sp.seen_ids} == {
            tasks[t] for t in sp.train_tasks
        }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_classes_out": 9}, "--classes must be between 1 and 8"),
        ({"n_classes_out": 0}, "--classes must be between"),
        ({"n_classes_out": 9, "n_splits": 2}, "between 1 and 8"),
        ({"n_classes_out": 1, "n_splits": 11}, "at most 10 splits"),
        ({"n_splits": 10**8}, "at most 1000"),
    ],
)
def test_bad_class_split_arguments(kwargs, message):
    model_tasks = [t for t in PAIRS10 for _ in range(2)]
    with pytest.raises(ParamsimError, match=message):
        make_class_splits(model_tasks, **kwargs)


def test_learned_methods_never_train_on_a_held_out_class():
    nets, model_tasks = synthetic_networks(PAIRS6, per_task=2, seed=2)
    # extra group tasks: some touch every class, so the guard has work in every split
    groups = [
        Task(((0, 1), (2,))),
        Task(((3,), (4, 5))),
        Task(((1, 2), (3, 4))),
        Task(((5,), (0,))),
    ]
    extra_nets, extra_tasks = synthetic_networks(groups, per_task=2, seed=3)
    splits = make_class_splits(model_tasks, n_splits=4, seed=1, n_classes_out=1)
    RecordingLearned.fits.clear()
    res = evaluate(
        nets,
        model_tasks,
        [RecordingLearned()],
        splits,
        strict=True,
        extra=ExtraModels(extra_nets, extra_tasks),
    )
    assert res["protocol"]["holdout"] == "classes"
    assert res["protocol"]["n_heldout_classes"] == 1
    for sp, fit in zip(splits, RecordingLearned.fits, strict=True):
        held = set(sp.heldout_classes)
        assert not any(t.classes & held for t in fit["train"] | fit["val"])
        safe = {t for t in groups if not t.classes & held}
        assert safe and safe <= fit["train"]  # extra tasks among the other classes do train
        assert fit["n"] == len(sp.train_ids) + 2 * len(safe)


def test_cli_holdout_classes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(paramsim.zoo, "open_zoo", lambda path: FakeZoo(PAIRS6, per_task=2))
    out = tmp_path / "out"
    args = ["eval", str(tmp_path / "z"), "--methods", "flat", "--splits", "3", "--quiet"]
    assert main([*args, "--holdout", "classes", "--classes", "1", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["protocol"]["holdout"] == "classes"
    held = [d["heldout_classes"] for d in data["split_details"]]
    assert len(held) == 3 and all(len(h) == 1 for h in held) and len(set(map(tuple, held))) == 3
    assert "random class splits" in (out / "results.md").read_text()
    capsys.readouterr()
    for extra, message in [
        (["--classes", "1"], "--classes goes with --holdout classes"),
        (["--holdout", "classes", "--test-fraction", "0.3"], "--test-fraction goes with"),
        (["--holdout", "classes", "--classes", "5"], "--classes must be between 1 and 4"),
    ]:
        assert main([*args, *extra, "--out", str(tmp_path / "o2")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err


def test_a_short_side_names_its_own_fix():
    """Too few held-out tasks asks for more classes held out; too few training tasks for fewer."""
    star = [Task(((0,), (b,))) for b in range(1, 6) for _ in range(2)]  # every task has 0
    with pytest.raises(ParamsimError, match="1 held-out tasks .*more --classes"):
        make_class_splits(star, n_classes_out=1, n_splits=1, seed=0)  # holds out class 5
    with pytest.raises(ParamsimError, match="0 training tasks .*fewer --classes"):
        make_class_splits(star, n_classes_out=2, n_splits=1, seed=3)  # holds out 0 and 4

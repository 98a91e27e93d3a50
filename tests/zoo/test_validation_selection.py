"""Models are selected on rows held out of the training split, never on the test split."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from paramsim.data import load_digits
from paramsim.zoo import RECIPES, Zoo, build_zoo, train_one, train_stacked
from paramsim.zoo import build as build_module
from paramsim.zoo.build import Shard, train_shard
from paramsim.zoo.trainer import TaskData, batch_indices, holdout

DIGITS = load_digits()
RECIPE = RECIPES["digits-pairs"].with_overrides(
    tasks="0-1,2-3", models_per_task=2, steps=(6, 9), val_fraction=0.2, shard_size=4
)


def test_holdout_is_disjoint_fixed_and_the_models_never_train_on_it():
    _, plans = RECIPE.plan(DIGITS.n_classes, DIGITS.input_shape, seed=3)
    for p in plans:
        n = len(p.task.train_data(DIGITS)[1])
        pool, val = holdout(n, p.val_fraction, p.val_seed)
        assert len(val) == round(0.2 * n) and len(pool) + len(val) == n
        assert not set(pool.tolist()) & set(val.tolist())
        assert not set(batch_indices(p, n).flatten().tolist()) & set(val.tolist())
    # one validation set per task, the same for all its models; another for another task
    seeds = {(p.task_id, p.val_seed) for p in plans}
    assert len(seeds) == 2 and len({s for _, s in seeds}) == 2
    _, again = RECIPE.plan(DIGITS.n_classes, DIGITS.input_shape, seed=3)
    assert [p.val_seed for p in again] == [p.val_seed for p in plans]


def test_without_validation_rows_the_draws_are_those_of_earlier_zoos():
    """val_fraction 0 keeps every zoo built before validation rows existed reproducible."""
    _, plans = RECIPES["digits-pairs"].plan(DIGITS.n_classes, DIGITS.input_shape, seed=0)
    p = plans[7]
    n = len(p.task.train_data(DIGITS)[1])
    gen = torch.Generator().manual_seed(p.seed + 1)  # the draw as written before
    n_sub = min(max(p.batch_size, int(round(p.data_fraction * n))), n)
    subset = torch.randperm(n, generator=gen)[:n_sub]
    old = subset[torch.randint(0, n_sub, (p.steps, p.batch_size), generator=gen)]
    assert torch.equal(batch_indices(p, n), old)


def test_stacked_training_with_validation_rows_equals_training_alone():
    _, plans = RECIPE.plan(DIGITS.n_classes, DIGITS.input_shape, seed=1)
    data = TaskData.build(DIGITS, {p.task_id: p.task for p in plans})
    stack = train_stacked(plans, data)
    for i, plan in enumerate(plans):
        alone = train_one(plan, DIGITS).state_dict()
        for key, value in stack.state_dict(i).items():
            torch.testing.assert_close(value, alone[key], atol=1e-5, rtol=0)


def test_registry_records_validation_accuracy_on_the_held_out_rows(tmp_path):
    zoo = Zoo(build_zoo(RECIPE, tmp_path / "zoo", progress=False))
    assert zoo.summary()["val_acc"]["min"] >= 0
    for rec in zoo.records:
        x, y = rec.task.train_data(zoo.dataset())
        _, val = holdout(len(y), rec.settings["val_fraction"], rec.settings["val_seed"])
        with torch.no_grad():
            acc = (zoo.module(rec.id)(x[val]).argmax(1) == y[val]).float().mean().item()
        assert rec.val_acc == pytest.approx(acc)


@pytest.mark.parametrize("val, test, retrains", [(0.9, 0.1, 0), (0.1, 0.9, 2)])
def test_retraining_reads_validation_accuracy_not_test(val, test, retrains, monkeypatch):
    recipe = RECIPE.with_overrides(min_val_acc=0.5, max_retrains=2, steps=(2, 2))
    _, plans = recipe.plan(DIGITS.n_classes, DIGITS.input_shape, seed=0)

    def fixed(stack, data, split):
        value = {"train": 1.0, "val": val, "test": test}[split]
        return np.full(len(stack.plans), value)

    monkeypatch.setattr(build_module, "accuracies", fixed)
    results = train_shard(Shard("s", tuple(plans[:2])), recipe, DIGITS, seed=0)
    assert [r.retrains for r in results] == [retrains, retrains]
    assert all(r.val_acc == val and r.test_acc == test for r in results)
    if retrains:  # a retrain is a fresh draw of the same model
        assert all(r.plan != replace(p) for r, p in zip(results, plans, strict=False))

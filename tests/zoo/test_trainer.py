import pytest
import torch

from paramsim.data import Dataset, load_digits, pair_tasks
from paramsim.zoo import ArchSpec, ModelPlan, train_one, train_stacked
from paramsim.zoo.trainer import TaskData, accuracies

DIGITS = load_digits()
TASKS = pair_tasks(10)


def plans_for(archs, optimizer="adam", steps=30):
    return [
        ModelPlan(
            model_id=i,
            task_id=i % 3,
            task=TASKS[i % 3],
            arch=arch,
            seed=10 + i,
            lr=0.005 * (1 + i % 2),
            init_scale=0.7 + 0.2 * i,
            data_fraction=0.3 + 0.15 * i,
            steps=steps - 4 * i,  # models stop at different steps
            optimizer=optimizer,
        )
        for i, arch in enumerate(archs)
    ]


MLP = ArchSpec("mlp", (1, 8, 8), (32, 32))
CASES = {
    "mlp-adam": plans_for([MLP] * 4),
    "mlp-sgd": plans_for([MLP] * 4, "sgd"),
    "mlp-mixed-widths": plans_for([ArchSpec("mlp", (1, 8, 8), h) for h in [(32, 16), (8, 24)]]),
    "cnn-adam": plans_for([ArchSpec("cnn", (1, 8, 8), (4, 8))] * 3),
    "cnn-bn-pool-sgd": plans_for(
        [ArchSpec("cnn", (1, 8, 8), (4, 8), batchnorm=True, pool_after=(0,))] * 3, "sgd"
    ),
}


@pytest.fixture
def digits64():
    """In float64 the two paths agree to rounding; float32 drift (amplified by batch-norm and
    Adam on near-zero gradients) would otherwise hide a real difference behind a loose tol."""
    torch.set_default_dtype(torch.float64)
    yield Dataset(
        "digits", DIGITS.x_train.double(), DIGITS.y_train, DIGITS.x_test.double(), DIGITS.y_test, 10
    )
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("case", CASES)
def test_stacked_training_equals_training_each_model_alone(case, digits64):
    plans = CASES[case]
    data = TaskData.build(digits64, {p.task_id: p.task for p in plans})
    stack = train_stacked(plans, data)
    for i, plan in enumerate(plans):
        alone = train_one(plan, digits64).state_dict()
        together = stack.state_dict(i)
        assert together.keys() == alone.keys()
        for key in alone:
            assert together[key].shape == alone[key].shape
            torch.testing.assert_close(together[key], alone[key], atol=1e-9, rtol=0)


def test_float32_stacked_training_stays_close_to_alone():
    plans = CASES["mlp-adam"]
    data = TaskData.build(DIGITS, {p.task_id: p.task for p in plans})
    stack = train_stacked(plans, data)
    alone = train_one(plans[0], DIGITS).state_dict()
    for key, value in stack.state_dict(0).items():
        torch.testing.assert_close(value, alone[key], atol=1e-4, rtol=0)


def test_padded_units_stay_zero_and_training_learns():
    plans = plans_for([ArchSpec("mlp", (1, 8, 8), h) for h in [(8, 4), (32, 32)]], steps=60)
    data = TaskData.build(DIGITS, {p.task_id: p.task for p in plans})
    stack = train_stacked(plans, data)
    assert stack.padded
    assert torch.all(stack.params["1.weight"][0, 8:] == 0)
    assert torch.all(stack.params["3.weight"][0, :, 8:] == 0)
    assert accuracies(stack, data, "test").min() > 0.9


def test_accuracies_match_the_exported_module():
    plans = plans_for([MLP] * 2, steps=40)
    data = TaskData.build(DIGITS, {p.task_id: p.task for p in plans})
    stack = train_stacked(plans, data)
    acc = accuracies(stack, data, "test")
    for i, plan in enumerate(plans):
        module = plan.arch.build().eval()
        module.load_state_dict(stack.state_dict(i))
        x, y = plan.task.test_data(DIGITS)
        assert (module(x).argmax(1) == y).float().mean().item() == pytest.approx(acc[i])


def test_task_data_pools_rows_without_copying_images():
    """A shard's pool refers to the data set's images by row, so a shard of many group tasks
    costs index memory, not a copy of each task's images; pool row i is example i of its
    task's own data."""
    from paramsim.data import Task

    tasks = {0: Task(((0,), (1,))), 3: Task(((2, 5), (7,)))}
    data = TaskData.build(DIGITS, tasks)
    assert data.x_train.data_ptr() == DIGITS.x_train.data_ptr()
    assert data.x_test.data_ptr() == DIGITS.x_test.data_ptr()
    for tid, task in tasks.items():
        for split, slices, own in (
            ("train", data.train_slices, task.train_data(DIGITS)),
            ("test", data.test_slices, task.test_data(DIGITS)),
        ):
            start, stop = slices[tid]
            x_all, index, y_all = data.inputs(split)
            assert torch.equal(x_all[index[start:stop]], own[0])
            assert torch.equal(y_all[start:stop], own[1])

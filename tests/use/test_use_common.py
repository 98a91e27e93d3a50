from paramsim.data import Task, canonical_name, task_key
from paramsim.lps import LPS
from paramsim.use._common import load_similarity


def test_one_task_identity_for_keys_and_names():
    task = Task(((5, 7), (1, 2, 3)))
    flipped = Task(((1, 2, 3), (5, 7)))
    assert task_key(task) == task_key(flipped) == ((1, 2, 3), (5, 7))
    assert task_key(task) != task_key(Task(((5,), (1, 2, 3))))
    assert canonical_name(task) == canonical_name(flipped) == "1+2+3 vs 5+7"
    # a display name reads back to the same identity; other strings stay as they are
    assert canonical_name(task.name) == canonical_name(flipped.name) == "1+2+3 vs 5+7"
    assert canonical_name("not a task") == "not a task"


def test_a_saved_model_records_its_tasks_in_the_canonical_form(tmp_path):
    from tests.lps.helpers import random_mlp

    from paramsim.lps import FitConfig, LPSConfig

    # side order as a zoo may store it: the larger class first
    tasks = [Task(((b,), (a,))) for a, b in [(0, 1), (0, 2), (1, 2)] for _ in range(3)]
    nets = [random_mlp((6, 2), i) for i in range(len(tasks))]
    fc = FitConfig(epochs=1, patience=1, tasks_per_batch=3, models_per_task=2, min_batches=1)
    val = ([random_mlp((6, 2), 100 + i) for i in range(2)], [Task(((4,), (3,)))] * 2)
    LPS(LPSConfig(emb_dim=8, rank=8, n_probes=4), fc).fit(nets, tasks, val=val).save(tmp_path)
    sim = load_similarity(model=tmp_path)
    assert sim.seen_tasks == {canonical_name(t) for t in [*tasks, *val[1]]}
    assert "0 vs 1" in sim.seen_tasks and "1 vs 0" not in sim.seen_tasks

from paramsim.data import Task
from paramsim.lps import task_key
from paramsim.use._common import canonical_task


def test_canonical_task_matches_the_names_a_saved_model_records():
    # a saved LPS model records training tasks from task_key; zoo tasks keep their side order
    task = Task(((5, 7), (1, 2, 3)))
    recorded = " vs ".join("+".join(map(str, s)) for s in task_key(task))
    assert canonical_task(task.name) == recorded == "1+2+3 vs 5+7"
    assert canonical_task("3 vs 1") == canonical_task("1 vs 3") == "1 vs 3"
    assert canonical_task("not a task") == "not a task"

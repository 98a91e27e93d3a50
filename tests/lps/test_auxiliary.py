"""The auxiliary group-task zoo: built from the zoo's own recipe, cached, and used by fit."""

from __future__ import annotations

from paramsim.features.base import Context
from paramsim.lps import FitConfig, LPSMethod
from paramsim.lps import auxiliary as aux
from paramsim.zoo import RECIPES, Zoo, build_zoo

FAST = dict(epochs=1, patience=1, tasks_per_batch=4, models_per_task=2, min_batches=1)
SMALL = dict(emb_dim=8, rank=8, n_probes=4, set_hidden=8)


def test_auxiliary_zoo_is_built_once_beside_the_zoo_with_its_recipe(small_zoo):
    path = aux.auxiliary_zoo(small_zoo, 4, 2)
    assert path.parent == small_zoo / aux.AUX_DIR
    z, main = Zoo.open(path), Zoo.open(small_zoo)
    assert len(z) == 8 and z.summary_complete
    assert all(min(len(s) for s in t.sides) >= 1 and len(t.classes) >= 3 for t in z.tasks)
    assert {r.arch for r in z.records} == {r.arch for r in main.records}
    assert z.meta["recipe_settings"]["steps"] == [30, 40]  # the zoo's own training ranges
    assert z.meta["seed"] == main.meta["seed"] + 1
    stamp = (path / "registry.sqlite").stat().st_mtime_ns
    assert aux.auxiliary_zoo(small_zoo, 4, 2) == path  # cached: not rebuilt
    assert (path / "registry.sqlite").stat().st_mtime_ns == stamp
    assert aux.auxiliary_zoo(small_zoo, 99, 2) != path  # capped at 3 tasks per zoo task ...
    assert len(Zoo.open(aux.auxiliary_zoo(small_zoo, 99, 2)).tasks) == 15  # ... 15 here


def test_read_only_zoo_keeps_its_auxiliary_zoo_in_the_user_cache(small_zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(aux, "_writable", lambda _p: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = aux.auxiliary_dir(small_zoo, 4, 2)
    assert path.is_relative_to(tmp_path / "cache" / "paramsim")


def test_lps_method_trains_on_the_auxiliary_zoo_only_when_it_knows_the_zoo(small_zoo):
    z = Zoo.open(small_zoo)
    nets, tasks = z.networks(), [r.task for r in z.records]
    fc = FitConfig(**FAST, aux_tasks=4, aux_models_per_task=2, val_fraction=0.0)
    with_zoo = LPSMethod("lps", fc, **SMALL).fit(nets, tasks, Context(zoo=small_zoo))
    assert with_zoo.model is not None and with_zoo.model.meta["n_extra_models"] == 8
    without = LPSMethod("lps", fc, **SMALL).fit(nets, tasks, Context())
    assert without.model is not None and without.model.meta["n_extra_models"] == 0


def test_auxiliary_tasks_touching_a_class_absent_from_training_never_train(small_zoo):
    z = Zoo.open(small_zoo)
    aux_zoo = Zoo.open(aux.auxiliary_zoo(small_zoo, 15, 2))
    keep = [i for i, r in enumerate(z.records) if 9 not in r.task.classes]
    nets = [z.networks()[i] for i in keep]
    tasks = [z.records[i].task for i in keep]
    seen = frozenset(range(8))  # the task 8-9 is left out, so are its classes
    allowed = [r for r in aux_zoo.records if r.task.classes <= seen]
    assert 0 < len(allowed) < len(aux_zoo)  # the fixture has group tasks on both sides
    fc = FitConfig(**FAST, aux_tasks=15, aux_models_per_task=2, val_fraction=0.0)
    fitted = LPSMethod("lps", fc, **SMALL).fit(nets, tasks, Context(zoo=small_zoo))
    assert fitted.model.meta["n_extra_models"] == len(allowed)
    kept_n, kept_t = aux.usable_auxiliary(
        aux_zoo.networks(), [r.task for r in aux_zoo.records], tasks
    )
    assert len(kept_n) == len(allowed) and all(t.classes <= seen for t in kept_t)


def test_a_zoo_with_a_cached_auxiliary_zoo_still_resumes_and_verifies(small_zoo):
    """The auxiliary zoo lives inside the zoo directory: `zoo build` must still know the
    directory as its own zoo (a resume, not a refusal) and `zoo info --verify` stays clean."""
    from paramsim.cli import main

    aux.auxiliary_zoo(small_zoo, 4, 2)
    assert (small_zoo / aux.AUX_DIR).is_dir()
    before = {p.name: p.stat().st_mtime_ns for p in (small_zoo / "shards").iterdir()}
    recipe = RECIPES["digits-pairs"].with_overrides(
        tasks="0-1,2-3,4-5,6-7,8-9", models_per_task=2, steps=(30, 40)
    )
    build_zoo(recipe, small_zoo, progress=False)  # complete: nothing to redo, nothing refused
    assert {p.name: p.stat().st_mtime_ns for p in (small_zoo / "shards").iterdir()} == before
    assert main(["zoo", "info", str(small_zoo), "--verify"]) == 0


def test_building_the_auxiliary_zoo_says_so_once(small_zoo, capsys):
    aux.auxiliary_zoo(small_zoo, 3, 2)
    assert "building its auxiliary zoo" in capsys.readouterr().err
    aux.auxiliary_zoo(small_zoo, 3, 2)  # cached: silent
    assert capsys.readouterr().err == ""


def test_a_damaged_auxiliary_shard_is_retrained_not_an_error(small_zoo):
    path = aux.auxiliary_zoo(small_zoo, 3, 2)
    shard = sorted((path / "shards").glob("*.safetensors"))[0]
    good = shard.read_bytes()
    shard.write_bytes(good[:100] + b"garbage" + good[107:])
    assert aux.auxiliary_zoo(small_zoo, 3, 2) == path
    assert shard.read_bytes() == good and not Zoo.open(path).verify()  # same seed, same bytes

"""Bad recipes are refused when loaded, naming the field and what it allows; nothing is written."""

import pytest

from paramsim.cli import main
from paramsim.data import load_digits
from paramsim.errors import ParamsimError
from paramsim.zoo import RECIPES, Recipe, load_recipe

# (TOML text, a piece of the error that names the field and what it allows)
BAD = {
    "rmsprop": ('optimizer = "rmsprop"', "optimizer = 'rmsprop'.*adam \\| sgd"),
    "misspelt base": ('base = "digits-pair-cnn"', "base = 'digits-pair-cnn'.*digits-pairs-cnn"),
    "base is a path": ('base = "/etc/hosts"', "base = '/etc/hosts'"),
    "base not a string": ("base = 3", "base = 3"),
    "negative data_fraction": ("data_fraction = [-0.5, 1.0]", "data_fraction\\[0\\]"),
    "data_fraction over 1": ("data_fraction = [0.5, 1.5]", "data_fraction\\[1\\]"),
    "data_fraction zero": ("data_fraction = [0.0, 0.5]", "data_fraction\\[0\\].*\\(0.0, 1.0\\]"),
    "lr underflows to 0": ("log10_lr = [-400, -2]", "log10_lr\\[0\\]"),
    "lr overflows": ("log10_lr = [-3, 400]", "log10_lr\\[1\\]"),
    "lr nan": ("log10_lr = [nan, -2]", "log10_lr\\[0\\]"),
    "lr inf": ("log10_lr = [-3, inf]", "log10_lr\\[1\\]"),
    "lr min > max": ("log10_lr = [-2, -3]", "log10_lr = \\(-2, -3\\).*low <= high"),
    "lr not a pair": ("log10_lr = [-3, -2, -1]", "log10_lr.*pair"),
    "lr a string": ('log10_lr = "fast"', "log10_lr.*pair"),
    "empty archs": ("archs = []", "archs = \\(\\)"),
    "arch key typo": ('archs = [{kind = "mlp", hiden = [32]}]', "archs\\[0\\].hiden.*hidden"),
    "arch kind": ('archs = [{kind = "transformer", hidden = [32]}]', "archs\\[0\\].kind.*mlp"),
    "arch no hidden": ('archs = [{kind = "mlp"}]', "archs\\[0\\]"),
    "arch not a table": ('archs = ["mlp"]', "archs\\[0\\]"),
    "zero width": ('archs = [{kind = "mlp", hidden = [0]}]', "archs\\[0\\].hidden"),
    "negative width": ('archs = [{kind = "mlp", hidden = [-8]}]', "archs\\[0\\].hidden"),
    "huge width": ('archs = [{kind = "mlp", hidden = [4000000, 32]}]', "archs\\[0\\].hidden.*4096"),
    "float width": ('archs = [{kind = "mlp", hidden = [3.5]}]', "archs\\[0\\].hidden"),
    "too deep": ('archs = [{kind = "mlp", hidden = [8, 8, 8, 8, 8, 8, 8, 8, 8]}]', "hidden"),
    "no layers": ('archs = [{kind = "cnn", hidden = []}]', "archs\\[0\\].hidden"),
    "mlp batchnorm": (
        'archs = [{kind = "mlp", hidden = [8], batchnorm = true}]',
        "archs\\[0\\].batchnorm.*CNNs only",
    ),
    "batchnorm not bool": ('archs = [{kind = "cnn", hidden = [8], batchnorm = 1}]', "batchnorm"),
    "pool index": ('archs = [{kind = "cnn", hidden = [4], pool_after = [3]}]', "pool_after"),
    "pool twice": ('archs = [{kind = "cnn", hidden = [4, 4], pool_after = [0, 0]}]', "pool_after"),
    "pool a table": (
        'archs = [{kind = "cnn", hidden = [4], pool_after = [{a = 1}]}]',
        "pool_after",
    ),
    "hidden a table": ('archs = [{kind = "cnn", hidden = {a = 1}}]', "archs\\[0\\].hidden"),
    "weight a string": ('archs = [{kind = "mlp", hidden = [8], weight = "x"}]', "weight"),
    "negative weight": ('archs = [{kind = "mlp", hidden = [8], weight = -1}]', "weight"),
    "zero batch": ("batch_size = 0", "batch_size = 0.*1 to 4096"),
    "negative batch": ("batch_size = -3", "batch_size = -3"),
    "float batch": ("batch_size = 1.5", "batch_size = 1.5"),
    "bool batch": ("batch_size = true", "batch_size = True"),
    "zero steps": ("steps = [0, 10]", "steps\\[0\\]"),
    "steps min > max": ("steps = [10, 5]", "steps = \\(10, 5\\)"),
    "too many steps": ("steps = [1, 10000000]", "steps\\[1\\].*100000"),
    "zero models": ("models_per_task = 0", "models_per_task = 0"),
    "negative models": ("models_per_task = -2", "models_per_task = -2"),
    "too many models": ("models_per_task = 100000", "models_per_task.*1000"),
    "zero shard": ("shard_size = 0", "shard_size = 0"),
    "too many retrains": ("max_retrains = 1000", "max_retrains.*0 to 10"),
    "groups:0": ('tasks = "groups:0"', "tasks = 'groups:0'.*groups:N"),
    "groups:x": ('tasks = "groups:x"', "tasks = 'groups:x'"),
    "groups huge": ('tasks = "groups:99999999"', "tasks = 'groups:99999999'"),
    "same class twice": ('tasks = "0-0"', "tasks = '0-0'"),
    "half a pair": ('tasks = "1-"', "tasks = '1-'"),
    "letters": ('tasks = "a-b"', "tasks = 'a-b'"),
    "duplicate task": ('tasks = "0-1,0-1"', "tasks = '0-1,0-1'.*each task once"),
    "swapped duplicate": ('tasks = "0-1,2-3,1-0"', "tasks = '0-1,2-3,1-0'.*either order"),
    "empty item": ('tasks = "0-1,,2-3"', "tasks = '0-1,,2-3'"),
    "empty tasks": ('tasks = ""', "tasks = ''"),
    "tasks number": ("tasks = 5", "tasks = 5"),
    "min_val_acc over 1": ("min_val_acc = 1.5", "min_val_acc = 1.5"),
    "old name negative": ("min_test_acc = -0.1", "min_val_acc = -0.1"),
    "both names": ("min_test_acc = 0.5\nmin_val_acc = 0.5", "min_val_acc only"),
    "selection without validation": ("min_val_acc = 0.9", "val_fraction = 0.0.*min_val_acc > 0"),
    "val_fraction too big": ("val_fraction = 0.9", "val_fraction = 0.9"),
    "zero init scale": ("init_scale = [0, 1]", "init_scale\\[0\\]"),
    "unknown dataset": ('dataset = "imagenet"', "dataset = 'imagenet'.*cifar100"),
    "name not a string": ("name = 5", "name = 5"),
    "unknown key": ("colour = 3", "unknown recipe field 'colour'"),
    "not toml": ("steps = [", "not valid TOML"),
}


def _write(tmp_path, text: str):
    path = tmp_path / "bad.toml"
    path.write_text('base = "digits-pairs"\n' + text + "\n" if "base" not in text else text)
    return path


@pytest.mark.parametrize("case", BAD)
def test_library_refuses_a_bad_recipe_naming_the_field(case, tmp_path):
    text, message = BAD[case]
    with pytest.raises(ParamsimError, match=message) as info:
        load_recipe(str(_write(tmp_path, text)))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["rmsprop", "misspelt base", "huge width", "groups:0", "not toml"])
def test_cli_refuses_a_bad_recipe_and_writes_nothing(case, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    recipe = _write(tmp_path, BAD[case][0])
    assert main(["zoo", "build", str(recipe), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's own file"
    # and a directory that does not exist yet is not created
    assert main(["zoo", "build", str(recipe), "--out", str(tmp_path / "new"), "--quiet"]) == 2
    assert not (tmp_path / "new").exists()


def test_cli_override_is_validated_too(tmp_path, capsys):
    out = tmp_path / "z"
    args = ["zoo", "build", "digits-pairs", "--out", str(out), "--tasks", "groups:0", "--quiet"]
    assert main(args) == 2
    assert "tasks = 'groups:0'" in capsys.readouterr().err and not out.exists()


def test_every_built_in_recipe_is_valid_and_old_toml_name_still_reads(tmp_path):
    for recipe in RECIPES.values():
        recipe.validate()
        assert recipe.min_val_acc == 0 or recipe.val_fraction > 0
    path = tmp_path / "old.toml"
    path.write_text('base = "digits-pairs"\nmin_test_acc = 0.7\nval_fraction = 0.2\n')
    recipe = load_recipe(str(path))
    assert recipe.min_val_acc == 0.7 and recipe.val_fraction == 0.2


DIGITS = load_digits()


@pytest.mark.parametrize(
    "changes, message",
    [
        # 64 inputs x 4096 + 4096 x 4096 values: over the per-model bound on 8x8 digits
        ({"archs": ({"kind": "mlp", "hidden": (4096, 4096)},)}, "archs\\[0\\].hidden.*values"),
        ({"archs": ({"kind": "mlp", "hidden": (4096,)},), "shard_size": 1000}, "shard_size"),
        (
            {"archs": ({"kind": "cnn", "hidden": (4, 4, 4, 4), "pool_after": (0, 1, 2, 3)},)},
            "pool_after.*at most 3 poolings of 8x8",
        ),
        ({"tasks": "groups:10000", "models_per_task": 1000}, "more than the limit"),
    ],
)
def test_plans_beyond_the_size_limits_are_refused_before_training(changes, message):
    recipe = RECIPES["digits-pairs"].with_overrides(**changes)
    with pytest.raises(ParamsimError, match=message):
        recipe.plan(DIGITS.n_classes, DIGITS.input_shape, seed=0)


def test_recipe_made_in_python_is_validated():
    with pytest.raises(ParamsimError, match="optimizer"):
        Recipe("mine", optimizer="rmsprop")
    with pytest.raises(ParamsimError, match="batch_size"):
        RECIPES["digits-pairs"].with_overrides(batch_size=0)


def test_recorded_settings_give_back_the_recipe():
    import json

    from paramsim.zoo import RECIPES, Recipe

    recipe = RECIPES["fashion-pairs-cnn"]
    stored = json.loads(json.dumps(recipe.__dict__, default=list))  # as build.py records it
    assert Recipe.from_settings(stored) == recipe
    old = {**stored, "min_test_acc": stored.pop("min_val_acc"), "from_a_newer_version": 1}
    assert Recipe.from_settings(old) == recipe  # the old field name is read, unknown ones left out


def test_settings_recorded_before_validation_rows_still_give_a_recipe():
    """A zoo built when the floor was checked on the test split recorded `min_test_acc` and no
    `val_fraction`; deriving a recipe from it (LPS's auxiliary zoo) must not fail validation."""
    import json

    from paramsim.zoo import RECIPES, Recipe
    from paramsim.zoo.recipes import LEGACY_VAL_FRACTION

    stored = json.loads(json.dumps(RECIPES["digits-pairs-cnn"].__dict__, default=list))
    old = {k: v for k, v in stored.items() if k not in ("min_val_acc", "val_fraction")}
    old["min_test_acc"] = 0.9
    got = Recipe.from_settings(old)
    assert got.min_val_acc == 0.9 and got.val_fraction == LEGACY_VAL_FRACTION
    no_floor = Recipe.from_settings({**old, "min_test_acc": 0.0})
    assert no_floor.val_fraction == 0.0  # nothing is selected, so no rows are held out
    for bad in ("0.9", [1], True):  # a damaged record is a one-line error, not a TypeError
        with pytest.raises(ParamsimError, match="min_val_acc"):
            Recipe.from_settings({**old, "min_test_acc": bad})

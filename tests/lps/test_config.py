"""LPS and fit configs: every field typed and bounded, sizes known before allocation, and
lps.json valid JSON (never bare NaN) that a damaged copy of cannot get past loading."""

from __future__ import annotations

import json
import resource

import pytest

from paramsim.errors import ParamsimError
from paramsim.lps import LPS, FitConfig, LPSConfig, LPSNet
from paramsim.lps.config import MAX_PARAMETERS

from .helpers import random_mlp

SMALL = dict(emb_dim=8, rank=6, n_probes=3)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"func_branch": False},
        {"weight_branch": False, "probe_gram": True},
        {"flat_head": True, "bias": False, "input_shape": (1, 4, 4)},
        {"sign_invariant": True, "probe_sign_invariant": True},
        {"chain": False, "class_direction": False},
        {"second_order": False, "n_outputs": 5},
        {"max_hidden_depths": 0, "rank": 200},
    ],
    ids=str,
)
def test_n_parameters_is_what_the_network_holds(overrides):
    cfg = LPSConfig(**{**SMALL, **overrides})
    net = LPSNet(cfg)
    held = sum(t.numel() for t in [*net.parameters(), *net.buffers()])
    assert cfg.n_parameters == held


@pytest.mark.parametrize(
    "cls, field, value, message",
    [
        (LPSConfig, "n_probes", 10_000_000, "n_probes must be in"),
        (LPSConfig, "n_probes", 0, "n_probes must be in"),
        (LPSConfig, "emb_dim", "128", "emb_dim must be a finite int"),
        (LPSConfig, "emb_dim", 12.0, "emb_dim must be a finite int"),
        (LPSConfig, "rank", True, "rank must be a finite int"),
        (LPSConfig, "bias", 1, "bias must be true or false"),
        (LPSConfig, "input_shape", (8, 8), "input_shape must be 3 positive"),
        (LPSConfig, "input_shape", (1, 0, 8), "input_shape must be 3 positive"),
        (LPSConfig, "input_shape", "abc", "input_shape must be 3 positive"),
        (LPSConfig, "input_shape", (1, 100_000, 100_000), "larger than paramsim handles"),
        (LPSConfig, "emb_dim", 4096, "parameters, more than"),  # each bound fine, the total not
        (FitConfig, "epochs", 0, "epochs must be in"),
        (FitConfig, "epochs", 2.5, "epochs must be a finite int"),
        (FitConfig, "lr", 0.0, "lr must be in (0.0"),
        (FitConfig, "lr", float("nan"), "lr must be a finite float"),
        (FitConfig, "temperature", float("inf"), "temperature must be a finite float"),
        (FitConfig, "val_fraction", 1.0, "val_fraction must be in"),
        (FitConfig, "loss", "triplet", "unknown loss"),
        (FitConfig, "loss", None, "unknown loss"),
        (FitConfig, "seed", -1, "seed must be in"),
        (FitConfig, "extra", [], "extra must be an object"),
    ],
)
def test_each_field_is_checked(cls, field, value, message):
    with pytest.raises(ParamsimError, match=message.replace("(", r"\(")) as info:
        cls(**{field: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("data", [[1], None, "lps", 3, {"colour": "red"}])
def test_from_dict_refuses_non_objects_and_unknown_fields(data):
    for cls in (LPSConfig, FitConfig):
        with pytest.raises(ParamsimError, match="JSON object|unknown fields"):
            cls.from_dict(data)


def test_defaults_and_variants_pass_their_own_checks():
    from paramsim.lps import VARIANTS

    for cfg_kw, fit_kw in VARIANTS.values():
        assert LPSConfig.from_dict(LPSConfig(**cfg_kw).to_dict()) == LPSConfig(**cfg_kw)
        assert FitConfig.from_dict(FitConfig(**fit_kw).to_dict()) == FitConfig(**fit_kw)


@pytest.fixture
def saved(tmp_path):
    """A tiny fitted model whose history holds NaN and infinity, saved."""
    from paramsim.data import Task

    nets = [random_mlp((4, 2), seed=s) for s in range(6)]
    tasks = [Task(((0,), (1,))), Task(((2,), (3,))), Task(((4,), (5,)))] * 2
    fc = FitConfig(epochs=1, min_batches=1, tasks_per_batch=3, models_per_task=2, val_fraction=0)
    model = LPS(LPSConfig(**SMALL), fc).fit(nets, tasks)
    model.meta["best_val_map"] = float("nan")
    model.meta["history"].append({"loss": float("inf"), "val_map": float("-inf")})
    return model.save(tmp_path / "m")


def test_lps_json_is_strict_json_with_null_for_non_finite(saved):
    text = (saved / "lps.json").read_text()

    def refuse(name):
        raise AssertionError(f"bare {name} in lps.json")

    doc = json.loads(text, parse_constant=refuse)
    assert doc["meta"]["best_val_map"] is None
    assert doc["meta"]["history"][-1] == {"loss": None, "val_map": None}
    assert LPS.load(saved).meta["best_val_map"] is None


def test_an_old_lps_json_with_bare_nan_in_meta_still_loads(saved):
    path = saved / "lps.json"
    path.write_text(path.read_text().replace('"best_val_map": null', '"best_val_map": NaN'))
    assert "NaN" in path.read_text()
    assert LPS.load(saved).meta["best_val_map"] is None


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.mark.parametrize(
    "change",
    [
        {"n_probes": 10_000_000},
        {"rank": 4096, "emb_dim": 4096},
        {"input_shape": [3, 4096, 4096]},
        {"n_probes": 1024, "probe_sign_invariant": True, "emb_dim": 4096, "set_readout": False},
        {"set_hidden": 4096, "emb_dim": 4096, "n_probes": 1024, "probe_units": True},
    ],
    ids=str,
)
def test_huge_sizes_are_refused_before_allocating(saved, change):
    path = saved / "lps.json"
    doc = json.loads(path.read_text())
    doc["config"].update(change)
    path.write_text(json.dumps(doc))
    peak = _rss_mb()
    with pytest.raises(ParamsimError, match="lps.json"):
        LPS.load(saved)
    assert _rss_mb() - peak < 100  # ru_maxrss is a high-water mark: no big allocation happened


def test_non_finite_weights_are_refused(saved):
    from safetensors.torch import load_file, save_file

    state = load_file(str(saved / "lps.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name].clone().fill_(float("nan"))
    save_file(state, str(saved / "lps.safetensors"))
    with pytest.raises(ParamsimError, match=f"non-finite values in {name}"):
        LPS.load(saved)


def test_config_bound_allows_realistic_models():
    """CIFAR-sized inputs with the default design stay well inside the parameter bound."""
    assert LPSConfig(input_shape=(3, 32, 32)).n_parameters < MAX_PARAMETERS // 4
    assert LPSConfig(input_shape=(1, 28, 28), probe_gram=True).n_parameters < MAX_PARAMETERS // 4

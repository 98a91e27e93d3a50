"""Probe start images and the input basis: drawn from the training tasks' classes only, and
where the probes and the input projections start."""

from __future__ import annotations

import pytest
import torch

from paramsim.errors import ParamsimError
from paramsim.features.base import Context
from paramsim.lps import FitConfig, LPSConfig, LPSMethod
from paramsim.lps.material import input_basis, probe_start_images, zoo_material
from paramsim.lps.model import PROBE_MARGIN, LPSNet
from paramsim.zoo import Zoo

FAST = dict(epochs=1, patience=1, tasks_per_batch=4, models_per_task=2, min_batches=1)
SMALL = dict(emb_dim=8, rank=8, n_probes=6, set_hidden=8)


def _labelled(n_per_class: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = y.float()[:, None, None, None].expand(-1, 1, 2, 2) / classes  # pixel value names class
    return x.contiguous(), y


def test_start_images_are_spread_over_the_given_classes_only():
    x, y = _labelled(5, 4)
    got = probe_start_images(x, y, frozenset({0, 2, 3}), 7, seed=1)
    labels = (got[:, 0, 0, 0] * 4).round().long().tolist()
    assert len(labels) == 7 and set(labels) <= {0, 2, 3}
    assert sorted(labels.count(c) for c in (0, 2, 3)) == [2, 2, 3]  # round robin
    assert torch.equal(got, probe_start_images(x, y, frozenset({0, 2, 3}), 7, seed=1))
    assert len(probe_start_images(x, y, frozenset({1}), 9, seed=1)) == 5  # all there are


def test_start_images_become_the_first_probes_and_move_nothing_else():
    cfg = LPSConfig(input_shape=(1, 2, 2), **SMALL)
    images = torch.tensor([0.0, 0.3, 1.0, 0.5]).reshape(1, 1, 2, 2).expand(4, 1, 2, 2)
    started = LPSNet(cfg, seed=3, probe_images=images)
    plain = LPSNet(cfg, seed=3)
    want = images.clamp(PROBE_MARGIN, 1 - PROBE_MARGIN)
    assert torch.allclose(started.probes[:4], want, atol=1e-6)
    assert torch.equal(started.probes[4:], plain.probes[4:])  # the rest: the same noise
    others = dict(plain.named_parameters())
    for name, a in started.named_parameters():
        if name != "probes_raw":
            assert torch.equal(a, others[name]), name
    with pytest.raises(ParamsimError, match="probe start images have shape"):
        LPSNet(cfg, probe_images=torch.zeros(2, 1, 3, 3))


def test_zoo_material_draws_probe_images_only_from_training_classes(small_zoo):
    z = Zoo.open(small_zoo)
    ds = z.dataset()
    train = [t for t in z.tasks if 9 not in t.classes]  # class 8 and 9 held out with "8 vs 9"
    fc = FitConfig(aux_tasks=0)
    got = zoo_material(small_zoo, fc, train, 16)
    assert got.probe_images is not None and len(got.probe_images) == 16
    flat = ds.x_train.flatten(1)
    rows = [int((flat - im.flatten()).abs().sum(1).argmin()) for im in got.probe_images]
    assert {int(ds.y_train[i]) for i in rows} == set(range(8))
    off = zoo_material(small_zoo, FitConfig(aux_tasks=0, probe_init="noise"), train, 16)
    assert off.probe_images is None and off.networks == []


def test_fit_through_the_zoo_starts_probes_on_data_and_records_it(small_zoo, monkeypatch):
    import paramsim.lps.fit as fit_module

    z = Zoo.open(small_zoo)
    nets, tasks = z.networks(), [r.task for r in z.records]
    fc = FitConfig(**FAST, aux_tasks=0, val_fraction=0.0)
    started = []

    def recording(cfg, seed=0, probe_images=None, **kw):
        net = LPSNet(cfg, seed=seed, probe_images=probe_images, **kw)
        if cfg.func_branch:
            started.append(net.probes.detach().clone())
        return net

    monkeypatch.setattr(fit_module, "LPSNet", recording)
    on_zoo = LPSMethod("lps", fc, **SMALL).fit(nets, tasks, Context(zoo=small_zoo))
    assert on_zoo.model is not None and on_zoo.model.meta["probe_init"] == "data"
    want = zoo_material(small_zoo, fc, tasks, SMALL["n_probes"]).probe_images
    assert want is not None
    assert torch.allclose(started[0], want.clamp(PROBE_MARGIN, 1 - PROBE_MARGIN), atol=1e-6)
    nofunc = LPSMethod("lps-nofunc", fc, **SMALL).fit(nets, tasks, Context(zoo=small_zoo))
    assert nofunc.model is not None and nofunc.model.meta["probe_init"] == "noise"
    alone = LPSMethod("lps", fc, **SMALL).fit(nets, tasks, Context())
    assert alone.model is not None and alone.model.meta["probe_init"] == "noise"
    v1 = LPSMethod("lps-v1", fc, **SMALL).fit(nets, tasks, Context(zoo=small_zoo))
    assert v1.model is not None and v1.model.meta["probe_init"] == "noise"


def test_a_zoo_rebuilt_in_place_is_read_again_not_served_from_the_cache(tmp_path):
    from paramsim.lps.material import zoo_training_set
    from paramsim.zoo import RECIPES, build_zoo

    path = tmp_path / "zoo"
    recipe = RECIPES["digits-pairs"].with_overrides(tasks="0-1", models_per_task=1, steps=(5, 5))
    build_zoo(recipe, path, progress=False)
    first_nets, first_tasks = zoo_training_set(path)
    assert zoo_training_set(str(path))[0] is first_nets  # cached while the zoo is unchanged
    bigger = recipe.with_overrides(tasks="0-1,2-3", models_per_task=2)
    build_zoo(bigger, tmp_path / "other", progress=False)
    (tmp_path / "zoo").rename(tmp_path / "old")  # replace the zoo at the same path
    (tmp_path / "other").rename(path)
    nets, tasks = zoo_training_set(path)
    assert (len(first_nets), len(nets)) == (1, 4)
    assert {t.classes for t in tasks} != {t.classes for t in first_tasks}


def _pixel_per_class(n_per_class: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of 2 x 2 pixels where class c lights pixel c alone, at a varying brightness."""
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.zeros(len(y), 1, 2, 2)
    x.view(len(y), -1)[torch.arange(len(y)), y] = torch.linspace(0.2, 1.0, len(y))
    return x, y


def test_input_basis_spans_the_given_classes_images_only():
    x, y = _pixel_per_class(6, 4)
    basis = input_basis(x, y, frozenset({0, 1}), 100, seed=0)
    assert basis is not None and basis.shape == (5, 5)  # 4 pixels and the bias row
    assert torch.allclose(basis.T @ basis, torch.eye(5), atol=1e-5)
    top = basis[:, :3]  # pixels 0, 1 and the constant 1 carry all the second moment
    assert torch.allclose(top[2:4], torch.zeros(2, 3), atol=1e-6)  # held-out pixels 2, 3
    assert torch.equal(basis, input_basis(x, y, frozenset({0, 1}), 100, seed=0))
    other = input_basis(x, y, frozenset({2, 3}), 100, seed=0)  # counter-test: it moves
    assert other is not None and basis is not None
    assert torch.allclose(other[:2, :3], torch.zeros(2, 3), atol=1e-6)


def test_input_basis_starts_projections_only_when_they_drop_directions():
    wide = LPSConfig(input_shape=(1, 4, 4), **SMALL)  # 17 rows, 8 kept: projected
    basis = torch.linalg.qr(torch.randn(17, 17, generator=torch.Generator().manual_seed(0)))[0]
    started, plain = LPSNet(wide, seed=2, input_basis=basis), LPSNet(wide, seed=2)
    assert wide.projects_inputs and started.started_on_data and not plain.started_on_data
    for s in range(started.U.shape[0]):
        assert torch.equal(started.U[s], basis[:, :8])
    assert torch.equal(started.V, basis[:, :8])
    others = dict(plain.named_parameters())
    for name, a in started.named_parameters():
        if name not in ("U", "V"):
            assert torch.equal(a, others[name]), name
    narrow = LPSConfig(input_shape=(1, 2, 2), **SMALL)  # 5 rows, all kept: nothing to choose
    assert not narrow.projects_inputs
    same = LPSNet(narrow, seed=2, input_basis=torch.eye(5))
    assert not same.started_on_data
    twin = LPSNet(narrow, seed=2).parameters()
    for (name, a), b in zip(same.named_parameters(), twin, strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ParamsimError, match="input basis is"):
        LPSNet(wide, input_basis=torch.eye(9))


def test_fit_through_the_zoo_starts_projections_on_data_and_records_it(small_zoo):
    z = Zoo.open(small_zoo)
    nets, tasks = z.networks(), [r.task for r in z.records]
    fc = FitConfig(**FAST, aux_tasks=0, val_fraction=0.0)
    cfg = LPSConfig(input_shape=(1, 8, 8), **SMALL)  # 65 chain rows, 8 kept
    got = zoo_material(small_zoo, fc, tasks, 0, basis_for=cfg)
    assert got.input_basis is not None and got.input_basis.shape == (65, 8)
    assert zoo_material(small_zoo, fc, tasks, 0).input_basis is None  # no MLP to read
    every = LPSConfig(input_shape=(1, 8, 8), **{**SMALL, "rank": 80})  # keeps all 65 rows
    assert zoo_material(small_zoo, fc, tasks, 0, basis_for=every).input_basis is None
    off = FitConfig(**FAST, aux_tasks=0, basis_init="random")
    assert zoo_material(small_zoo, off, tasks, 0, basis_for=cfg).input_basis is None
    no_bias = LPSConfig(input_shape=(1, 8, 8), bias=False, **SMALL)  # 64 rows: no bias row
    got = zoo_material(small_zoo, fc, tasks, 0, basis_for=no_bias)
    assert got.input_basis is not None and got.input_basis.shape == (64, 8)
    fitted = LPSMethod("lps", fc, bias=False, **SMALL).fit(nets, tasks, Context(zoo=small_zoo))
    assert fitted.model is not None and fitted.model.meta["basis_init"] == "data"
    meta = {
        variant: LPSMethod(variant, fc, **SMALL).fit(nets, tasks, context).model.meta
        for variant, context in (
            ("lps", Context(zoo=small_zoo)),
            ("lps-v1", Context(zoo=small_zoo)),
            ("lps-noweights", Context(zoo=small_zoo)),
            ("lps-nofunc", Context()),
        )
    }
    assert {v: m["basis_init"] for v, m in meta.items()} == {
        "lps": "data",
        "lps-v1": "random",
        "lps-noweights": "random",
        "lps-nofunc": "random",
    }


def test_input_basis_without_images_or_bias_row():
    x, y = _pixel_per_class(6, 4)
    assert input_basis(x, y, frozenset({7}), 100, seed=0) is None  # no image of class 7
    plain = input_basis(x, y, frozenset({0, 1}), 100, seed=0, bias=False)
    assert plain is not None and plain.shape == (4, 4)
    assert torch.allclose(plain[2:, :2], torch.zeros(2, 2), atol=1e-6)  # pixels 0 and 1 only

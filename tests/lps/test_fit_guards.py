"""Guards found by a review (session 17): validation tasks without a same-task pair, ReLU
rescaling through a flattened feature map, probe start images beside the signed logit head,
and a deeply nested lps.json."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.lps.helpers import random_mlp
from tests.lps.test_fit import CFG, FAST, proto_zoo

from paramsim.data import Task
from paramsim.errors import ParamsimError
from paramsim.lps import LPS, FitConfig, LPSConfig, LPSNet
from paramsim.lps.pool import TrainingPool, augment
from paramsim.weights import Layer, Network
from paramsim.weights.network import apply_layers


def _trained_away_from_start(model: LPS, cfg: LPSConfig, seed: int) -> bool:
    start = LPSNet(cfg, seed=seed).state_dict()
    return any(not torch.equal(v, start[k]) for k, v in model.net.state_dict().items())


def test_validation_tasks_of_one_model_do_not_keep_the_untrained_network():
    """One model per validation task: no validation mAP exists (NaN). The fit must not
    then 'keep' epoch 0, i.e. hand back the untrained network as the best one."""
    nets, tasks = proto_zoo(6, 3)
    vn, vt = proto_zoo(3, 1, seed=1)
    vt = [Task(((7,), (9,))), Task(((2,), (9,))), Task(((3,), (9,)))]
    m = LPS(CFG, FAST).fit(nets, tasks, val=(vn, vt))
    assert m.meta["best_epoch"] == FAST.epochs
    assert _trained_away_from_start(m, CFG, FAST.seed)


def test_internal_split_never_holds_out_tasks_without_a_same_task_pair():
    """`paramsim fit` on a zoo of one model per task (the auxiliary zoo supplies the pairs):
    a validation task of one model gives no mAP, and the fit used to keep epoch 0."""
    nets, tasks = proto_zoo(6, 1)
    extra_n, _ = proto_zoo(6, 3, seed=0)
    extra_t = [tasks[i // 3] for i in range(len(extra_n))]
    fc = FitConfig(**{**FAST.to_dict(), "val_fraction": 0.34})
    m = LPS(CFG, fc).fit(nets, tasks, extra_networks=extra_n, extra_tasks=extra_t)
    assert m.meta["best_epoch"] > 0
    assert not np.isnan(m.meta["best_val_map"]) or m.meta["val_tasks"] == []
    assert _trained_away_from_start(m, CFG, fc.seed)


def _cnn_conv_flatten_linear(seed: int) -> Network:
    g = torch.Generator().manual_seed(seed)
    c1 = Layer(
        "conv",
        torch.randn(4, 1, 3, 3, generator=g),
        torch.randn(4, generator=g) * 0.1,
        1,
        ("relu", "maxpool2"),
    )
    c2 = Layer(
        "conv",
        torch.randn(5, 4, 3, 3, generator=g) / 6,
        torch.randn(5, generator=g) * 0.1,
        1,
        ("relu", "flatten"),
    )
    lin = Layer("linear", torch.randn(2, 5 * 4 * 4, generator=g) / 9, torch.zeros(2))
    return Network((c1, c2, lin), (1, 8, 8), ())


@pytest.mark.parametrize(
    "make", [lambda: _cnn_conv_flatten_linear(5), lambda: random_mlp((9, 7, 2), 1)]
)
def test_relu_rescaling_augmentation_keeps_the_function(make):
    """The rescaling augmentation is documented as exactly function-preserving; a conv layer
    read by a linear layer through Flatten (H*W weights per channel) must be compensated too."""
    net = make()
    pool = TrainingPool.build([net], [0])
    ws, bs = augment(
        pool.groups[0],
        torch.tensor([0]),
        FitConfig(noise_aug=0.0),
        torch.Generator().manual_seed(0),
    )
    x = torch.rand(7, 1, 8, 8)
    got = apply_layers(net, [(w[0], b[0]) for w, b in zip(ws, bs, strict=True)], x)
    torch.testing.assert_close(got, net(x), atol=1e-5, rtol=1e-4)


def test_probe_start_images_do_not_resize_the_signed_logit_head():
    """`k` (outputs) was overwritten by the number of probe start images, so a signed (not
    set) probe readout got a head of P x images columns and the fit failed on its first batch."""
    cfg = LPSConfig(set_readout=False, combine="sum", emb_dim=16, rank=16, n_probes=8)
    net = LPSNet(cfg, seed=0, probe_images=torch.rand(8, 1, 8, 8))
    assert sum(t.numel() for t in net.state_dict().values()) == cfg.n_parameters
    e = net.embed([random_mlp((16, 2), 0)])
    assert e.shape == (1, cfg.out_dim)


def test_deeply_nested_lps_json_is_a_one_line_error(tmp_path):
    cfg = LPSConfig(emb_dim=16, rank=16, n_probes=8)
    LPS(cfg, FitConfig(), LPSNet(cfg), {}).save(tmp_path)
    (tmp_path / "lps.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ParamsimError, match="cannot read"):
        LPS.load(tmp_path)

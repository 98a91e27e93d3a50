"""Helpers of the scale tests: a tiny recipe of many small shards, an LPS model that needs no
fitting, and the zoo fingerprint two builds must share."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from paramsim.zoo import RECIPES


def small_recipe():
    """3 tasks x 2 MLPs, one model per shard: six short jobs to spread over workers."""
    return RECIPES["digits-pairs"].with_overrides(
        tasks="0-1,0-2,3-4", models_per_task=2, steps=(30, 50), shard_size=1
    )


def fingerprint(zoo: Path) -> tuple[list, list]:
    """Every shard's file checksum and every model's tensor checksum and accuracies."""
    with sqlite3.connect(zoo / "registry.sqlite") as conn:
        shards = conn.execute("SELECT name, sha256, n_models FROM shards ORDER BY name").fetchall()
        models = conn.execute(
            "SELECT id, shard, sha256, train_acc, test_acc, retrains FROM models ORDER BY id"
        ).fetchall()
    return shards, models


def untrained_lps(directory: Path, seed: int = 0) -> Path:
    """A saved LPS model with random weights: it embeds deterministically, without a fit."""
    from paramsim.lps import LPS, LPSConfig, LPSNet

    cfg = LPSConfig(emb_dim=16, n_probes=4, rank=8)
    return LPS(cfg, net=LPSNet(cfg, seed=seed).eval()).save(directory)

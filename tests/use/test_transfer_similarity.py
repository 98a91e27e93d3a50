"""Probe-to-model similarity within the memory budget: which path runs, and that each gives
the in-memory numbers."""

from __future__ import annotations

import numpy as np

from paramsim.features import get_method
from paramsim.features.base import Context
from paramsim.use._common import cross_similarity
from paramsim.use.transfer import similarity
from paramsim.use.transfer.similarity import bounded_cross_similarity, embedding_width


def _no_disk(*args, **kwargs):
    raise AssertionError("a Gram method over the budget must not build a disk index")


def test_within_the_budget_the_numbers_are_the_in_memory_ones(use_zoo, monkeypatch):
    monkeypatch.setattr(similarity, "disk_index_similarity", _no_disk)
    nets = use_zoo.networks()
    method, ctx = get_method("chain"), Context(seed=0)
    got = bounded_cross_similarity(method, nets[:4], nets[4:], ctx, 2**30)
    assert np.array_equal(got, cross_similarity(method, nets[:4], nets[4:], ctx))


def test_gram_methods_over_the_budget_are_compared_from_their_factors(use_zoo, monkeypatch):
    monkeypatch.setattr(similarity, "disk_index_similarity", _no_disk)
    nets = use_zoo.networks()
    ctx = Context(seed=0)
    for name in ("gram1", "chain", "e2e"):
        method = get_method(name)
        width = embedding_width(method, nets, ctx)
        tiny = 3 * width * 8  # less than the embeddings of the probes and the zoo
        got = bounded_cross_similarity(method, nets[:4], nets[4:], ctx, tiny)
        want = cross_similarity(method, nets[:4], nets[4:], ctx)
        np.testing.assert_allclose(got, want, atol=1e-6)  # the Grams of embed are float32
        assert np.array_equal(got.argmax(1), want.argmax(1))


def test_the_in_memory_path_counts_its_copies_of_the_embeddings(use_zoo, monkeypatch):
    def no_dense(*args, **kwargs):
        raise AssertionError("embeddings held three times over would exceed the budget")

    monkeypatch.setattr(similarity, "cross_similarity", no_dense)
    nets = use_zoo.networks()
    method, ctx = get_method("chain"), Context(seed=0)
    once = len(nets) * embedding_width(method, nets, ctx) * 8  # every embedding once
    assert similarity.fits(method, nets, len(nets), 2 * once, ctx)
    got = bounded_cross_similarity(method, nets[:4], nets[4:], ctx, 2 * once)
    np.testing.assert_allclose(got, cross_similarity(method, nets[:4], nets[4:], ctx), atol=1e-6)

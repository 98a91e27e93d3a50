"""Gram methods compared from their factors equal the cosine of their embeddings, chunking
does not change the result, and a chunk's size respects the memory budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paramsim.features import get_method
from paramsim.features.base import cosine_matrix
from paramsim.features.gram import (
    factor_shapes,
    factored_chunk,
    factored_chunk_for,
    factored_cross_similarity,
    factoring_pays,
)
from paramsim.weights import Network, from_module
from paramsim.weights.arch import ArchSpec

MLP = ArchSpec("mlp", (1, 5, 5), (6, 4))
WIDE = ArchSpec("mlp", (1, 5, 5), (9, 3))  # same input space, other widths
CNN = ArchSpec("cnn", (1, 6, 6), (3, 4))


def _nets(spec: ArchSpec, n: int, seed: int) -> list[Network]:
    torch.manual_seed(seed)
    return [from_module(spec.build().eval(), spec.input_shape) for _ in range(n)]


METHODS = [
    ("gram1", {}),
    ("chain", {}),
    ("chain", {"depths": (-1,)}),
    ("chain", {"bias": True}),
    ("e2e", {}),
    ("e2e", {"blocks": ("gram",)}),
]


@pytest.mark.parametrize(("name", "options"), METHODS)
def test_factored_equals_the_embeddings_cosine(name, options) -> None:
    method = get_method(name, **options)
    queries = _nets(MLP, 3, seed=1) + _nets(WIDE, 2, seed=2)
    gallery = _nets(WIDE, 4, seed=3) + _nets(MLP, 5, seed=4)
    want = cosine_matrix(method.embed(queries), method.embed(gallery))
    got = factored_cross_similarity(method, queries, gallery, 2**30)
    np.testing.assert_allclose(got, want, atol=1e-6)  # embed forms its Grams in float32


@pytest.mark.parametrize(("name", "options"), METHODS[:2])
def test_chunks_of_one_equal_one_chunk(name, options) -> None:
    method = get_method(name, **options)
    queries, gallery = _nets(MLP, 4, seed=5), _nets(MLP, 3, seed=6) + _nets(WIDE, 3, seed=7)
    assert factored_chunk_for(method, queries + gallery, 1) == 1
    whole = factored_cross_similarity(method, queries, gallery, 2**30)
    ones = factored_cross_similarity(method, queries, gallery, 1)
    np.testing.assert_allclose(ones, whole, rtol=0, atol=1e-13)


def test_a_zero_network_is_orthogonal_to_everything() -> None:
    method = get_method("chain")
    nets = _nets(MLP, 3, seed=8)
    for lay in nets[0].layers:
        lay.weight.zero_()
    got = factored_cross_similarity(method, nets[:1], nets, 2**30)
    assert np.isfinite(got).all() and np.all(got == 0)
    np.testing.assert_allclose(got, cosine_matrix(method.embed(nets[:1]), method.embed(nets)))


def test_chunk_size_respects_the_budget_and_is_the_largest_that_does() -> None:
    for row in (1, 7, 1000, 25_088 * 8 * 3):
        for pair in (0, 1, 8, 8 * 1028):
            for budget in (1, 100, 10_000, 2**20, 512 * 2**20, 3 * 2**30):
                c = factored_chunk(row, pair, budget)
                assert c >= 1
                if c > 1:
                    assert 2 * c * row + c * c * pair <= budget
                bigger = c + 1
                assert 2 * bigger * row + bigger * bigger * pair > budget


def test_chunk_for_fashion_sized_mlps_holds_a_few_hundred() -> None:
    # 784-32-32-2 as the Fashion-MNIST zoo: 512 MB holds chunks of about 150 networks
    spec = ArchSpec("mlp", (1, 28, 28), (32, 32))
    method = get_method("chain")
    nets = _nets(spec, 1, seed=9)
    assert factor_shapes(method, nets) == [("gram", 784, 32), ("gram", 784, 32)]
    c = factored_chunk_for(method, nets, 512 * 2**20)
    assert 100 <= c <= 200
    row, pair = 2 * 8 * 784 * (3 * 32 + 1), 8 * (32 * 32 + 4)
    assert 2 * c * row + c * c * pair <= 512 * 2**20


def test_factoring_pays_only_with_few_units_per_row() -> None:
    assert factoring_pays(get_method("chain"), _nets(MLP, 1, seed=10))
    assert not factoring_pays(get_method("flat"), _nets(MLP, 1, seed=10))
    pixels = get_method("chain", space="pixels")  # CNN features: channels x positions
    shapes = factor_shapes(pixels, _nets(CNN, 1, seed=11))
    assert any(units * units > rows * (rows + 1) // 2 for _, rows, units in shapes)
    assert not factoring_pays(pixels, _nets(CNN, 1, seed=11))


@pytest.mark.parametrize(("name", "options"), METHODS)
def test_all_pairs_beyond_the_budget_come_from_the_factors(name, options, monkeypatch) -> None:
    import paramsim.features.gram as gram

    method = get_method(name, **options)
    nets = _nets(MLP, 4, seed=9) + _nets(WIDE, 3, seed=10)
    calls = []
    real = gram.factored_cross_similarity

    def recording(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(gram, "factored_cross_similarity", recording)
    dense = method.similarity(nets)  # tiny Grams: the embeddings' cosine
    assert calls == []
    assert gram.gram_bytes(method, nets) > 0
    monkeypatch.setattr(gram, "SIMILARITY_BUDGET", gram.gram_bytes(method, nets) - 1)
    factored = method.similarity(nets)
    assert calls == [gram.SIMILARITY_BUDGET]
    np.testing.assert_allclose(factored, dense, atol=1e-6)
    np.testing.assert_allclose(np.diag(factored), 1.0, atol=1e-9)

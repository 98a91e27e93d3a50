"""`Method.set_dependent` is declared truthfully, and `embed_jointly` embeds such methods on
the union of queries and gallery."""

import numpy as np
import pytest
from tests.lps.helpers import random_mlp

from paramsim.features import Context, embed_jointly, get_method
from paramsim.use._common import cross_similarity

NETS = [random_mlp((6, 5, 2), seed) for seed in range(7)]


@pytest.mark.parametrize(
    "name, options",
    [
        ("flat", {}),
        ("stats", {}),
        ("gram1", {}),
        ("chain", {}),
        ("e2e", {}),
        ("probes", {"n": 16}),
        ("match", {"mode": "reference"}),
        ("match", {"mode": "pairwise"}),
    ],
)
def test_declared_set_dependence_matches_behaviour(name, options):
    m = get_method(name, **options)
    ctx = Context(seed=0)
    whole = m.similarity(NETS, ctx)
    part = m.similarity(NETS[3:], ctx)  # without the first model (match's first reference)
    # a method whose pair scores change when other models join the set must declare it
    changes = not np.allclose(whole[3:, 3:], part, atol=1e-6)
    assert changes == m.set_dependent


def test_embed_jointly_embeds_set_dependent_methods_on_the_union():
    ctx = Context(seed=0)
    stats = get_method("stats")
    q, g = NETS[:3], NETS[3:]
    eq, eg = embed_jointly(stats, q, g, ctx)
    np.testing.assert_allclose(np.vstack([eq, eg]), stats.embed(NETS, ctx))
    assert not np.allclose(eq, stats.embed(q, ctx))  # alone, the z-scores differ
    gram = get_method("gram1")
    eq, eg = embed_jointly(gram, q, g, ctx)
    np.testing.assert_allclose(eq, gram.embed(q, ctx))
    np.testing.assert_allclose(eg, gram.embed(g, ctx))


def test_cross_similarity_of_a_set_dependent_method_is_its_joint_similarity():
    ctx = Context(seed=0)
    for m in (get_method("stats"), get_method("match", mode="reference")):
        S = cross_similarity(m, NETS[:3], NETS[3:], ctx)
        np.testing.assert_allclose(S, m.similarity(NETS, ctx)[:3, 3:], atol=1e-9)

"""Names of selection rules and what each needs.

`paramsim transfer --methods` takes a comma list that may mix five kinds:

- a similarity method (`lps`, `chain`, `gram1`, ...): weights only, no forward pass;
- an estimator (`logme`, `leep`, `nce`, `knn`): one forward pass per candidate on the shots;
- a hybrid `BASE+EST@M` (e.g. `lps+logme@10`): the M candidates that BASE ranks highest,
  re-ranked by EST (M forward passes);
- a learned ranker `rank:BASE` (e.g. `rank:chain`): a small head on BASE's probe and source
  embeddings, trained to rank sources by fine-tuned accuracy on the other folds' targets;
- a remembered history `hist:BASE` (e.g. `hist:lps`): BASE's similarity mixed with how each
  source fine-tuned to the past targets most like the probe (`history`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paramsim.errors import ParamsimError
from paramsim.use.transfer.estimators import ESTIMATORS

_HYBRID = re.compile(r"^(?P<base>[^+@]+)\+(?P<est>[a-z]+)(@(?P<m>\d+))?$")
DEFAULT_M = 10


@dataclass(frozen=True)
class Rule:
    """One selection rule by kind; `base` names the similarity it builds on."""

    name: str
    kind: str  # "similarity" | "estimator" | "hybrid" | "learned" | "history"
    base: str = ""
    estimator: str = ""
    m: int = 0


def parse_rule(name: str) -> Rule:
    """The rule a name stands for; every name that is not of another kind is a similarity."""
    name = name.strip()
    if name in ESTIMATORS:
        return Rule(name, "estimator", estimator=name)
    if "+" in name or "@" in name:
        got = _HYBRID.match(name)
        if not got or got["est"] not in ESTIMATORS:
            raise ParamsimError(
                f"cannot read {name!r}; a hybrid is BASE+ESTIMATOR@M such as lps+logme@10 "
                f"(estimators: {', '.join(ESTIMATORS)})"
            )
        m = int(got["m"]) if got["m"] else DEFAULT_M
        if m < 1:
            raise ParamsimError(f"{name}: M must be at least 1")
        base = got["base"]
        if base in ESTIMATORS:
            raise ParamsimError(f"{name}: the prefilter must be weights-only, not {base}")
        parse_rule(base)  # a prefilter may be a ranker or a history: checked as such
        return Rule(name, "hybrid", base=base, estimator=got["est"], m=m)
    for prefix, kind in (("rank:", "learned"), ("hist:", "history")):
        if name.startswith(prefix):
            base = name[len(prefix) :]
            if not base or base in ESTIMATORS or "+" in base or ":" in base:
                raise ParamsimError(
                    f"{name}: {prefix} needs a similarity method, e.g. {prefix}chain"
                )
            return Rule(name, kind, base=base)
    return Rule(name, "similarity", base=name)


def parse_rules(names: Sequence[str]) -> list[Rule]:
    """Rules in the order given, each once; what hybrids, rankers and histories build on
    (similarities, estimators, and a ranker or history under a hybrid) is added before them,
    so that it is reported too."""
    out: dict[str, Rule] = {}

    def add(rule: Rule) -> None:
        if rule.kind in ("hybrid", "learned", "history"):
            add(parse_rule(rule.base))
        if rule.kind == "hybrid":
            add(Rule(rule.estimator, "estimator", estimator=rule.estimator))
        out.setdefault(rule.name, rule)

    for name in names:
        add(parse_rule(name))
    return list(out.values())


def similarity_names(rules: Sequence[Rule]) -> list[str]:
    """The weights-only methods the rules need loaded, in order."""
    return [r.name for r in rules if r.kind == "similarity"]


def hybrid_scores(base: np.ndarray, rerank: np.ndarray, m: int) -> np.ndarray:
    """Scores that order candidates as the hybrid does: per row, the m best by `base` first,
    ordered by `rerank`, then the rest in `base` order. NaN stays NaN (not a candidate).

    The values are only an order (ranks, higher is better), which is all that selection and
    rank correlation read.
    """
    out = np.full(base.shape, np.nan)
    for j in range(base.shape[0]):
        ok = np.flatnonzero(np.isfinite(base[j]))
        if len(ok) == 0:
            continue
        by_base = ok[np.argsort(-base[j, ok], kind="stable")]
        top, rest = by_base[:m], by_base[m:]
        second = np.where(np.isfinite(rerank[j, top]), rerank[j, top], -np.inf)
        top = top[np.argsort(-second, kind="stable")]
        order = np.concatenate([top, rest])
        out[j, order] = np.arange(len(order), 0, -1, dtype=float)
    return out


def split_rules(text: str | None, saved_lps: bool = False) -> tuple[list[str], list[str]]:
    """A --methods comma list -> (similarity methods to load, the other rules' names).

    Similarity names are checked against the known methods. With a saved LPS model (which is
    named "lps"), "lps" inside a hybrid or ranker means that model unless lps is listed too.
    """
    from paramsim.methods import parse_method_names

    listed = [n.strip() for n in (text or "").split(",") if n.strip()]
    dup = sorted({n for n in listed if listed.count(n) > 1})
    if dup:
        raise ParamsimError(f"{', '.join(dup)} named twice in --methods")
    rules = parse_rules(listed)
    sims = [
        r.name
        for r in rules
        if r.kind == "similarity" and not (saved_lps and r.name == "lps" and "lps" not in listed)
    ]
    if sims:
        parse_method_names(sims)  # one clear error for an unknown name
    return sims, [r.name for r in rules if r.kind != "similarity"]

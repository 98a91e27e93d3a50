"""Method lookup by name: one neutral table that `eval`, `use` and the CLI read.

Each entry names the class that implements a method and the preset options of that name
(an LPS ablation is `LPSMethod` with another `variant`). Classes are imported only when a
method is made, so this module sits below every stage: it imports no stage at load time,
`eval` never imports `lps`, and `lps` never imports `eval`.

Options are keyword arguments: `make_method("match", mode="reference")`. A method whose
module needs a third-party package that is not installed raises `MethodUnavailable` (a
`ParamsimError`), which callers may report as "skipped"; any other error surfaces.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from paramsim.errors import ParamsimError

if TYPE_CHECKING:
    from paramsim.features.base import Method


@dataclass(frozen=True)
class MethodEntry:
    """One row of the table: `target` is "module:Class"; `preset` options come first."""

    name: str
    target: str
    family: str  # "fixed" or "lps": what a caller may need to know before making it
    summary: str
    preset: Mapping[str, Any] = field(default_factory=dict)
    pair: bool = True  # compares two models from their weights alone (`paramsim compare`)

    @property
    def learned(self) -> bool:
        return self.family != "fixed"

    def load(self) -> type:
        """The implementing class; a missing third-party package becomes MethodUnavailable."""
        module, _, cls = self.target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = missing_dependency(exc)
            if missing is None:
                raise
            raise MethodUnavailable(self.name, missing) from exc
        return getattr(mod, cls)


class MethodUnavailable(ParamsimError):
    """A method that needs a third-party package that is not installed here."""

    def __init__(self, name: str, package: str) -> None:
        self.method = name
        self.package = package
        super().__init__(f"method {name} needs the package {package!r}; install it with pip")


def missing_dependency(exc: BaseException) -> str | None:
    """The third-party package a ModuleNotFoundError is about, or None.

    None for any other error and for a missing `paramsim` module: that is a broken install
    or a bug, which must surface instead of turning a method into "skipped".
    """
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    return None if top == "paramsim" else top


def _fixed(name: str, module: str, cls: str, summary: str, pair: bool = True) -> MethodEntry:
    return MethodEntry(name, f"paramsim.features.{module}:{cls}", "fixed", summary, pair=pair)


def _lps(variant: str, summary: str) -> MethodEntry:
    return MethodEntry(
        variant, "paramsim.lps.method:LPSMethod", "lps", summary, {"variant": variant}
    )


_ENTRIES = (
    _fixed("flat", "simple", "FlatMethod", "cosine of all parameters flattened"),
    _fixed(
        "stats",
        "simple",
        "StatsMethod",
        "per-layer weight statistics, z-scored over the set",
        pair=False,  # a set of at least 3 models
    ),
    _fixed("gram1", "gram", "Gram1Method", "first-layer Gram matrix"),
    _fixed("chain", "gram", "ChainMethod", "Grams of the linearised layer chain"),
    _fixed("e2e", "gram", "E2EMethod", "end-to-end linearised map"),
    _fixed("match", "match", "MatchMethod", "distance after weight matching"),
    _fixed("probes", "function", "ProbesMethod", "logits on synthetic probe inputs"),
    _fixed(
        "cka",
        "function",
        "CKAMethod",
        "linear CKA of hidden activations on real data",
        pair=False,
    ),
    _fixed("outputs", "function", "OutputsMethod", "logits on real data", pair=False),
    _lps("lps", "learned parameter similarity (the default)"),
    _lps("lps-v1", "the first default LPS: signed readouts, no auxiliary tasks"),
    _lps("lps-noaux", "the default LPS without its auxiliary group-task zoo"),
    _lps("lps-authors", "LPS as Wang et al. 2019 built it"),
    _lps("lps-nochain", "LPS without the layer chain"),
    _lps("lps-first-order", "LPS without second-order Grams"),
    _lps("lps-noweights", "LPS probes only"),
    _lps("lps-nofunc", "LPS weights only"),
    _lps("lps-relation", "LPS tuned for graded task relations"),
)
METHODS: dict[str, MethodEntry] = {e.name: e for e in _ENTRIES}
FIXED_METHODS: tuple[str, ...] = tuple(e.name for e in _ENTRIES if e.family == "fixed")
PAIR_METHODS: tuple[str, ...] = tuple(n for n in FIXED_METHODS if METHODS[n].pair)
LPS_VARIANTS: tuple[str, ...] = tuple(e.name for e in _ENTRIES if e.family == "lps")


def method_names() -> list[str]:
    """Every name `make_method` accepts, fixed methods first."""
    return list(METHODS)


def entry(name: str) -> MethodEntry:
    """The table row of `name`; an unknown name is a one-line ParamsimError."""
    got = METHODS.get(name)
    if got is None:
        raise ParamsimError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return got


def make_method(name: str, **options: Any) -> Method:
    """A new, unfitted method by name with `options` as keyword arguments.

    Options the class does not take are a ParamsimError naming them; errors raised while
    constructing the method are not caught.
    """
    row = entry(name)
    cls = row.load()
    kwargs = {**row.preset, **options}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise ParamsimError(f"bad options for method {name}: {exc}") from exc
    return cls(**kwargs)


def make_methods(
    names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[dict[str, Method], dict[str, str]]:
    """Methods by name (`options[name]` as keyword arguments) and, apart, the names that
    cannot run here because a third-party package is missing, with the reason."""
    made: dict[str, Method] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            made[name] = make_method(name, **dict((options or {}).get(name, {})))
        except MethodUnavailable as exc:
            unavailable[name] = str(exc)
    return made, unavailable


def parse_method_names(
    text: str | Sequence[str] | None, default: Sequence[str] = FIXED_METHODS
) -> list[str]:
    """Comma list (or sequence) -> names; None -> `default`. Unknown or repeated names and an
    empty list are ParamsimErrors."""
    if text is None:
        return list(default)
    raw = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in raw if n.strip()]
    if not names:
        raise ParamsimError("--methods is empty; give a comma list such as flat,gram1,chain")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ParamsimError(
            f"unknown method {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ParamsimError(f"method {', '.join(dup)} named twice in --methods")
    return names


__all__ = [
    "FIXED_METHODS",
    "PAIR_METHODS",
    "LPS_VARIANTS",
    "METHODS",
    "MethodEntry",
    "MethodUnavailable",
    "entry",
    "make_method",
    "make_methods",
    "method_names",
    "missing_dependency",
    "parse_method_names",
]

"""`paramsim reproduce`: the project's main result in one command.

Stages, each cached in the output directory and reused when its settings match:

1. zoo        OUT/zoo (or --zoo DIR): the default `digits-pairs` model set, built or resumed
2. eval       OUT/eval: fixed methods and LPS under the task-split protocol (paramsim.eval)
3. relate     OUT/relate/<method>: task-relation maps next to the ground truth
4. transfer   OUT/transfer: source selection for few-shot transfer
5. README     OUT/README.md: tables and pictures, a short results section

A method whose third-party package is missing is skipped and the report says why; an error
inside a method (LPS included) stops the run, so a bug never reads as "skipped".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paramsim.errors import ParamsimError
from paramsim.methods import MethodUnavailable
from paramsim.use._common import (
    Similarity,
    load_similarity,
    read_cached,
    settings_key,
    write_json,
)
from paramsim.use.transfer import TransferConfig

Say = Callable[[str], None]

QUICK_TASKS = "0-1,0-2,1-2,3-4,3-5,4-5"


@dataclass(frozen=True)
class ReproduceConfig:
    """What `paramsim reproduce` runs; `quick()` is the reduced version for tests."""

    recipe: str = "digits-pairs"
    zoo_seed: int = 0
    recipe_overrides: dict = field(default_factory=dict)
    eval_methods: tuple[str, ...] = (
        "flat",
        "stats",
        "gram1",
        "chain",
        "e2e",
        "match",
        "probes",
        "cka",
        "outputs",
        "lps",
    )
    splits: int = 3
    seed: int = 0
    relate_methods: tuple[str, ...] = ("lps", "chain", "gram1", "flat")
    transfer_methods: tuple[str, ...] = ("lps", "chain", "gram1", "flat")
    transfer_selectors: tuple[str, ...] = ("logme", "knn", "lps+logme@10", "hist:lps")
    transfer: TransferConfig = TransferConfig()
    lps_epochs: int | None = None  # None: the LPS default

    @classmethod
    def quick(cls) -> ReproduceConfig:
        return cls(
            recipe_overrides={"tasks": QUICK_TASKS, "models_per_task": 3, "steps": (60, 80)},
            eval_methods=("flat", "gram1", "chain", "lps"),
            splits=1,
            relate_methods=("lps", "gram1"),
            transfer_methods=("lps", "gram1"),
            transfer_selectors=("knn",),
            transfer=TransferConfig(shots=(1,), repeats=1, probe_steps=40, finetune_steps=15),
            lps_epochs=2,
        )

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _lps_similarity(cfg: ReproduceConfig) -> Similarity | str:
    """An unfitted LPS (with the configured epochs), or why it cannot run here."""
    try:
        sim = load_similarity(method="lps")
    except MethodUnavailable as exc:  # a missing third-party package; bugs surface
        return str(exc)
    if cfg.lps_epochs is not None:
        fc = sim.method.fit_config
        sim.method.fit_config = type(fc).from_dict(
            {**fc.to_dict(), "epochs": cfg.lps_epochs, "patience": cfg.lps_epochs}
        )
    return sim


def _lps_state(cfg: ReproduceConfig) -> str:
    """Why LPS cannot run, or "ok" and the digest of its effective settings: part of every
    cache key, so installing LPS or changing its defaults (a new release) recomputes."""
    got = _lps_similarity(cfg)
    if isinstance(got, str):
        return got
    method = got.method
    settings = {"fit": method.fit_config.to_dict(), "config": method.config_overrides}
    return f"ok {settings_key(settings)}"


def _similarities(names: Sequence[str], cfg: ReproduceConfig, skipped: dict[str, str]):
    out: dict[str, Similarity] = {}
    for name in names:
        if name == "lps":
            got = _lps_similarity(cfg)
        else:
            try:
                got = load_similarity(method=name)
            except MethodUnavailable as exc:
                got = str(exc)
        if isinstance(got, str):
            skipped[name] = got
        else:
            out[name] = got
    return out


def _zoo_stage(out: Path, zoo_dir: Path | None, cfg: ReproduceConfig, say: Say):
    from paramsim.zoo import build_zoo, load_recipe, open_zoo

    path = zoo_dir or out / "zoo"
    if (path / "registry.sqlite").is_file():
        zoo = open_zoo(path)
        if zoo.summary()["complete"]:
            say(f"zoo: reusing {path} ({len(zoo)} models, {len(zoo.tasks)} tasks)")
            return zoo, 0.0
        if zoo_dir is not None and zoo.meta.get("recipe") != cfg.recipe:
            raise ParamsimError(f"{path} is an incomplete zoo of another recipe; resume it first")
    elif zoo_dir is not None and path.exists() and any(path.iterdir()):
        raise ParamsimError(f"--zoo {path} is not a zoo directory (no registry.sqlite)")
    recipe = load_recipe(cfg.recipe).with_overrides(**cfg.recipe_overrides)
    say(f"zoo: building {recipe.name} into {path} (resumes a killed build)")
    t0 = time.perf_counter()
    build_zoo(recipe, path, seed=cfg.zoo_seed, progress=True)
    return open_zoo(path), time.perf_counter() - t0


def _eval_stage(zoo, out: Path, cfg: ReproduceConfig, say: Say) -> dict:
    from paramsim.eval import evaluate_zoo, write_report

    key = settings_key(
        {
            "zoo": _zoo_id(zoo),
            "methods": cfg.eval_methods,
            "splits": cfg.splits,
            "seed": cfg.seed,
            "lps_epochs": cfg.lps_epochs,
            "lps": _lps_state(cfg),
        }
    )
    cached = read_cached(out / "eval" / "results.json", key)
    if cached is not None:
        say("eval: reusing eval/results.json")
        return cached
    say(f"eval: {len(cfg.eval_methods)} methods x {cfg.splits} task splits")
    names = list(cfg.eval_methods)
    skipped: dict[str, str] = {}
    methods = {n: s.method for n, s in _similarities(names, cfg, skipped).items()}
    t0 = time.perf_counter()
    results = evaluate_zoo(
        zoo,
        methods,
        n_splits=cfg.splits,
        seed=cfg.seed,
        skipped=skipped,
        order=names,
        progress=lambda name, i: say(f"  eval: {name} split {i + 1}/{cfg.splits} done"),
    )
    results["zoo"] = Path(zoo.path).name
    results["wall_seconds"] = time.perf_counter() - t0
    results["settings_key"] = key
    write_report(results, out / "eval")
    for name, reason in results["skipped"].items():
        say(f"eval: skipped {name}: {reason}")
    return read_cached(out / "eval" / "results.json", key) or results


def _zoo_id(zoo) -> dict:
    return {"path": str(Path(zoo.path).resolve()), "models": len(zoo), "meta": zoo.meta}


def _relate_stage(zoo, out: Path, cfg: ReproduceConfig, say: Say) -> dict[str, Any]:
    from paramsim.use.relate import relate, summary_lines, write_relation

    skipped: dict[str, str] = {}
    results: dict[str, Any] = {}
    todo = []
    for name in cfg.relate_methods:
        key = settings_key(
            {
                "zoo": _zoo_id(zoo),
                "method": name,
                "seed": cfg.seed,
                "lps_epochs": cfg.lps_epochs,
                "lps": _lps_state(cfg) if name == "lps" else None,
            }
        )
        cached = read_cached(out / "relate" / name / "relation.json", key)
        if cached is not None:
            say(f"relate: reusing relate/{name}")
            results[name] = cached
        else:
            todo.append((name, key))
    if todo:
        nets = zoo.networks()
        sims = _similarities([n for n, _ in todo], cfg, skipped)
        for name, key in todo:
            if name not in sims:
                continue
            say(f"relate: {name}")
            try:
                res = relate(zoo, sims[name], seed=cfg.seed, networks=nets)
            except ParamsimError:
                raise
            except Exception as exc:
                skipped[name] = f"failed: {type(exc).__name__}: {exc}"
                continue
            write_relation(res, out / "relate" / name, key)
            for line in summary_lines(res):
                say(f"  {line}")
            results[name] = read_cached(out / "relate" / name / "relation.json", key) or res
    for name, reason in skipped.items():
        say(f"relate: skipped {name}: {reason}")
    return {"methods": results, "skipped": skipped}


def _transfer_stage(zoo, out: Path, cfg: ReproduceConfig, say: Say) -> dict[str, Any]:
    from paramsim.use.transfer import evaluate_transfer, transfer_key, write_transfer

    tcfg = cfg.transfer
    key = transfer_key(
        zoo,
        [
            *cfg.transfer_methods,
            *cfg.transfer_selectors,
            f"lps_epochs={cfg.lps_epochs}",
            _lps_state(cfg),
        ],
        tcfg,
    )
    cached = read_cached(out / "transfer" / "transfer.json", key)
    if cached is not None:
        say("transfer: reusing transfer/transfer.json")
        return cached
    skipped: dict[str, str] = {}
    sims = _similarities(cfg.transfer_methods, cfg, skipped)
    say(f"transfer: shots {','.join(map(str, tcfg.shots))}, {tcfg.repeats} draws per task")
    selectors = [s for s in cfg.transfer_selectors if s.split("+")[0] in sims or "+" not in s]
    res = evaluate_transfer(
        zoo, sims, tcfg, progress=lambda m: say(f"  transfer: {m}"), selectors=selectors
    )
    res["skipped"] = {**skipped, **res["skipped"]}
    write_transfer(res, out / "transfer", key)
    return read_cached(out / "transfer" / "transfer.json", key) or res


def _record_timings(out: Path, now: dict[str, float]) -> dict[str, Any]:
    """This run's stage times next to those of the run that last computed each stage.

    A stage that took under a second was reused, so the earlier time is the one that says
    what computing it costs; both are kept in OUT/timings.json.
    """
    import json
    import os

    path = out / "timings.json"
    try:
        before = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        before = {}
    computed = dict(before.get("computed", {}))
    for name, secs in now.items():
        if name != "total" and (secs >= 1.0 or name not in computed):
            computed[name] = secs
    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if now["total"] < 1.0 and before.get("machine"):
        machine = before["machine"]  # a cached rerun says nothing about the machine's speed
    doc = {"this_run": now, "computed": computed, "machine": machine}
    write_json(path, doc)
    return doc


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def reproduce(
    out: str | Path,
    zoo_dir: str | Path | None = None,
    config: ReproduceConfig | None = None,
    say: Say | None = None,
) -> dict[str, Any]:
    """Run every stage (reusing cached ones) and write OUT/README.md; returns the parts."""
    from paramsim.use.report import write_readme

    cfg = config or ReproduceConfig()
    say = say or (lambda _m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str, fn, *args):
        t0 = time.perf_counter()
        say(f"[{len(timings) + 1}/4] {name}")
        got = fn(*args)
        timings[name] = time.perf_counter() - t0
        return got

    zoo, _ = stage("zoo", _zoo_stage, out, Path(zoo_dir) if zoo_dir else None, cfg, say)
    ev = stage("eval", _eval_stage, zoo, out, cfg, say)
    rel = stage("relate", _relate_stage, zoo, out, cfg, say)
    tr = stage("transfer", _transfer_stage, zoo, out, cfg, say)
    timings["total"] = time.perf_counter() - started
    timings = _record_timings(out, timings)
    parts = {
        "zoo": zoo,
        "eval": ev,
        "relate": rel,
        "transfer": tr,
        "timings": timings,
        "config": cfg,
    }
    path = write_readme(parts, out)
    say(f"wrote {path} in {timings['this_run']['total']:.1f} s")
    return parts


__all__ = ["QUICK_TASKS", "ReproduceConfig", "reproduce"]

"""Training the LPS network (metric learning over training tasks, early stopping on
validation tasks) and its safe save/load. The pool and augmentation live in pool.py,
the losses in losses.py."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from paramsim.atomic import atomic_path, atomic_write
from paramsim.data.tasks import Task, canonical_name, task_key
from paramsim.devices import resolve_device
from paramsim.errors import ParamsimError
from paramsim.lps.config import FORMAT_VERSION, FitConfig, LPSConfig, finite_json
from paramsim.lps.losses import make_metric_loss, relation_loss
from paramsim.lps.model import LPSNet
from paramsim.lps.pool import TrainingPool, embed_pool, task_batches
from paramsim.ranking import all_vs_all_map
from paramsim.vectors import first_nonfinite_row
from paramsim.weights import Network

ProgressFn = Callable[[dict], None]
CONFIG_FILE = "lps.json"
WEIGHTS_FILE = "lps.safetensors"


# --------------------------------------------------------------------------- metrics


def retrieval_map(emb: np.ndarray, labels: Sequence[int]) -> float:
    """mAP with every model querying all others by cosine (labels: task per model)."""
    return all_vs_all_map(emb, np.asarray(labels))


def filter_extra(
    extra_tasks: Sequence[Task], train_tasks: Sequence[Task], exclude: Sequence[Task] | None
) -> list[int]:
    """Indices of extra training models that may be used without leaking held-out tasks.

    Dropped: tasks with the exact sides (either order) of a task in `exclude`. When `exclude`
    is None the held-out tasks are unknown, so the guard is conservative: an extra task whose
    side sizes match some main training task's (e.g. a pure pair) but that is not itself a
    training task could be a held-out task and is dropped.
    """
    train_keys = {task_key(t) for t in train_tasks}
    if exclude is not None:
        banned = {task_key(t) for t in exclude}
        return [i for i, t in enumerate(extra_tasks) if task_key(t) not in banned]
    shapes = {tuple(sorted(len(s) for s in t.sides)) for t in train_tasks}
    keep = []
    for i, t in enumerate(extra_tasks):
        k = task_key(t)
        if k in train_keys or tuple(sorted(len(s) for s in t.sides)) not in shapes:
            keep.append(i)
    return keep


def first_per_label(labels: Sequence[int], k: int) -> list[int]:
    """Indices of the first `k` items of each label, in order."""
    taken: Counter = Counter()
    out = []
    for i, label in enumerate(labels):
        if taken[label] < k:
            taken[label] += 1
            out.append(i)
    return out


MAP_TIE = 1e-3  # validation mAPs this close are a tie, broken by the second score
SCORE_MARGIN = 1e-4  # how much better the second score must be to break a tie


def replaces(score: tuple[float, float], best: tuple[float, float], top_map: float) -> bool:
    """Whether an epoch's (validation mAP, lower-is-better second score) replaces the kept
    epoch's: a clearly higher mAP, or a tie with a better second score. A tie is judged
    against the highest mAP seen so far, not the kept epoch's, so that a run of epochs each
    a little below the last cannot slide the kept mAP down through ties."""
    if score[0] > best[0] + MAP_TIE:
        return True
    return score[0] >= top_map - MAP_TIE and score[1] < best[1] - SCORE_MARGIN


def pair_relation_rho(
    emb: torch.Tensor, labels: Sequence[int], shared: torch.Tensor, n_scored: int
) -> float:
    """Spearman rho between task-pair similarity and shared classes, over the pairs that
    hold at least one task with label below `n_scored` (the validation tasks; the others are
    training tasks, there to give the validation tasks many more pairs to be ranked in).

    Task-pair similarity is the dot product of mean unit embeddings, as in `relation_loss`.
    NaN when fewer than three pairs or either side is constant.
    """
    from scipy.stats import spearmanr

    lab = np.asarray(labels)
    present = np.unique(lab)  # a label without models has no similarity: left out
    e = emb.detach().double().cpu().numpy()
    means = np.stack([e[lab == t].mean(0) for t in present])
    sim = means @ means.T
    a, b = np.triu_indices(len(present), k=1)
    scored = present[a] < n_scored
    x = sim[a[scored], b[scored]]
    y = shared.double().cpu().numpy()[present[a[scored]], present[b[scored]]]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------- the model


def shared_classes(keys: Sequence, device: torch.device) -> torch.Tensor:
    """How many classes each two tasks (task keys, in label order) have in common."""
    classes = [set().union(*map(set, k)) for k in keys]
    return torch.tensor(
        [[len(a & b) for b in classes] for a in classes], dtype=torch.float32, device=device
    )


@dataclass
class LPS:
    """A learned similarity over trained networks: fit on tasks, embed any model, save/load.

    `LPS().fit(networks, tasks, val=(val_networks, val_tasks))` infers the input shape and
    output count from the networks when no config is given.
    """

    config: LPSConfig | None = None
    fit_config: FitConfig = field(default_factory=FitConfig)
    net: LPSNet | None = None
    meta: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- fit
    def fit(
        self,
        networks: Sequence[Network],
        tasks: Sequence[Task],
        context=None,
        val: tuple[Sequence[Network], Sequence[Task]] | None = None,
        *,
        extra_networks: Sequence[Network] = (),
        extra_tasks: Sequence[Task] = (),
        exclude_tasks: Sequence[Task] | None = None,
        progress: ProgressFn | None = None,
        time_limit: float | None = None,
        device: str | torch.device | None = None,
        probe_images: torch.Tensor | None = None,
        input_basis: torch.Tensor | None = None,
    ) -> LPS:
        """Train on `networks` labelled by `tasks` (one per model), plus the extra models whose
        tasks pass `filter_extra`; stop early on validation mAP; keep the best epoch.

        Without `val`, `fit_config.val_fraction` of the training tasks are held out for it.
        `device` (cpu by default, or cuda[:N]) is where the network and the stacked weights
        train; random draws stay on the CPU, and the fitted network comes back on the CPU.
        `probe_images` (images of the zoo's data, in [0, 1]; `paramsim.lps.material` draws
        them from the classes of all tasks given, validation share included) start the learned
        probes when `fit_config.probe_init` is "data" (`paramsim.lps.material`); without them
        the probes start as noise. `input_basis` (principal directions of up to 4,096
        images of the same classes, `paramsim.lps.material.input_basis`) starts the weight
        branch's input projections when `fit_config.basis_init` is "data" and an MLP trains;
        without it they start random.
        """
        dev = resolve_device(device)  # before any work: a missing GPU is the first refusal
        fc = self.fit_config
        if len(networks) != len(tasks):
            raise ParamsimError(f"{len(networks)} networks but {len(tasks)} tasks; one per model")
        if len(extra_networks) != len(extra_tasks):
            raise ParamsimError("extra_networks and extra_tasks differ in length")
        if not networks:
            raise ParamsimError("no training networks given")
        seed = fc.seed
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        networks, tasks = list(networks), list(tasks)
        if val is None and fc.val_fraction > 0:
            # only tasks with a same-task pair can be validated (one model gives no mAP)
            counts = Counter(task_key(t) for t in tasks)
            keys = sorted(k for k, c in counts.items() if c >= 2)
            n_val = int(round(len(keys) * fc.val_fraction))
            if len(keys) - n_val >= 2 and n_val >= 2:
                chosen = {keys[i] for i in rng.choice(len(keys), n_val, replace=False)}
                vi = [i for i, t in enumerate(tasks) if task_key(t) in chosen]
                ti = [i for i, t in enumerate(tasks) if task_key(t) not in chosen]
                val = ([networks[i] for i in vi], [tasks[i] for i in vi])
                networks, tasks = [networks[i] for i in ti], [tasks[i] for i in ti]
        main_tasks = list(tasks)
        excluded = list(exclude_tasks) if exclude_tasks is not None else None
        if val is not None and excluded is not None:
            excluded += list(val[1])
        keep = filter_extra(extra_tasks, main_tasks, excluded)
        if val is not None:  # validation tasks never train
            vkeys = {task_key(t) for t in val[1]}
            keep = [i for i in keep if task_key(extra_tasks[i]) not in vkeys]
        all_nets = networks + [extra_networks[i] for i in keep]
        all_tasks = tasks + [extra_tasks[i] for i in keep]

        cfg = self.config or LPSConfig(
            input_shape=tuple(all_nets[0].input_shape), n_outputs=all_nets[0].n_outputs
        )
        self.config = cfg
        if fc.probe_init != "data" or not cfg.func_branch:
            probe_images = None
        if fc.basis_init != "data" or not any(n.kind == "mlp" for n in all_nets):
            input_basis = None
        net = LPSNet(cfg, seed=seed, probe_images=probe_images, input_basis=input_basis).to(dev)
        why = net.check(all_nets)
        if why:
            raise ParamsimError(why)
        keys = {}
        labels = [keys.setdefault(task_key(t), len(keys)) for t in all_tasks]
        if max(np.bincount(labels)) < 2:  # a contrastive loss needs a same-task pair
            raise ParamsimError(
                f"LPS needs at least 2 training models of one task; the {len(all_nets)} "
                "training models are each of another task (build the zoo with "
                "--models-per-task 2 or more, or add --extra-zoo)"
            )
        pool = TrainingPool.build(all_nets, labels).to(dev)
        shared = shared_classes(list(keys), dev)
        val_pool = val_shared = None
        if val is not None and len(val[0]):
            vk: dict = {}
            vlabels = [vk.setdefault(task_key(t), len(vk)) for t in val[1]]
            # validation mAP needs a task with two models; without one it is NaN, no epoch
            # would beat epoch 0 and the untrained network would be kept: keep the last epoch
            if max(np.bincount(vlabels)) >= 2:
                val_pool = TrainingPool.build(val[0], vlabels).to(dev)
                val_shared = shared_classes(list(vk), dev)
                if fc.val_tiebreak == "relation":
                    # validation tasks ranked among themselves and against the training tasks
                    # (two models each): a few validation tasks alone make few related pairs
                    ref = first_per_label(labels[: len(networks)], 2)
                    ref_labels = [len(vk) + labels[i] for i in ref]
                    rel_pool = TrainingPool.build(
                        list(val[0]) + [all_nets[i] for i in ref], vlabels + ref_labels
                    ).to(dev)
                    rel_shared = shared_classes(list(vk) + list(keys), dev)
                    n_val_tasks = len(vk)

        loss_fn, extra_mod = make_metric_loss(fc, len(keys), cfg.out_dim, gen)
        if extra_mod is not None:
            extra_mod.to(dev)
        func_loss = fc.func_loss_weight > 0 and cfg.func_branch
        probe_params = [p for n, p in net.named_parameters() if n == "probes_raw"]
        other = [p for n, p in net.named_parameters() if n != "probes_raw"]
        if extra_mod is not None:
            other += list(extra_mod.parameters())
        groups = [{"params": other, "lr": fc.lr}]
        if probe_params:
            groups.append({"params": probe_params, "lr": fc.lr_probes, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=fc.lr, weight_decay=fc.weight_decay)
        base_lrs = [g["lr"] for g in opt.param_groups]

        def val_score() -> tuple[float, float]:
            """Validation mAP and, to break its frequent ties at 1.0, a lower-is-better
            second score: the validation loss, or minus the validation relation rho."""
            if val_pool is None:
                return float("nan"), float("nan")
            with torch.no_grad():
                net.eval()
                if fc.val_tiebreak == "relation":  # the validation models lead rel_pool
                    er, _ = embed_pool(net, rel_pool, np.arange(len(rel_pool)), None, gen)
                    e = er[: len(val_pool)]
                else:
                    e, _ = embed_pool(net, val_pool, np.arange(len(val_pool)), None, gen)
                vlab = torch.as_tensor(val_pool.labels, device=dev)
                vl = float(val_loss(e, vlab))
                if fc.val_tiebreak != "supcon" and fc.relation_weight > 0:
                    vl += fc.relation_weight * float(relation_loss(e, vlab, val_shared))
                if fc.val_tiebreak == "relation":
                    rho = pair_relation_rho(er, rel_pool.labels, rel_shared, n_val_tasks)
                    # NaN when the pairs cannot rank (too few, or all sharing as many classes):
                    # fixed for the whole fit, so every epoch falls back to the objective alike
                    if np.isfinite(rho):
                        vl = -rho
                net.train()
            return retrieval_map(e.cpu().numpy(), val_pool.labels), vl

        from pytorch_metric_learning import losses as pml_losses

        val_loss = pml_losses.SupConLoss(temperature=fc.temperature)
        history = []
        score = val_score()
        best = (score, 0, copy.deepcopy(net.state_dict()))
        top_map = score[0]
        history.append(
            {"epoch": 0, "loss": float("nan"), "val_map": score[0], "val_loss": score[1]}
        )
        if progress:
            progress(history[-1])
        started = time.perf_counter()
        lab_t = torch.as_tensor(pool.labels, device=dev)
        stale = 0
        for epoch in range(1, fc.epochs + 1):
            net.train()
            if fc.lr_schedule == "cosine":
                factor = 0.5 * (1.0 + np.cos(np.pi * (epoch - 1) / fc.epochs))
                for group, base in zip(opt.param_groups, base_lrs, strict=True):
                    group["lr"] = base * factor
            losses_ = []
            for batch in task_batches(pool.labels, fc, rng, pool.kinds):
                emb, fpart = embed_pool(net, pool, batch, fc, gen, func_loss)
                loss = loss_fn(emb, lab_t[batch])
                if fpart is not None:
                    loss = loss + fc.func_loss_weight * val_loss(fpart, lab_t[batch])
                if fc.relation_weight > 0:
                    loss = loss + fc.relation_weight * relation_loss(emb, lab_t[batch], shared)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses_.append(float(loss.detach()))
            score = val_score()
            history.append(
                {
                    "epoch": epoch,
                    "loss": float(np.mean(losses_)),
                    "val_map": score[0],
                    "val_loss": score[1],
                }
            )
            if progress:
                progress(history[-1])
            top_map = max(top_map, score[0]) if np.isfinite(score[0]) else top_map
            if val_pool is None or replaces(score, best[0], top_map):
                best = (score, epoch, copy.deepcopy(net.state_dict()))
                stale = 0
            else:
                stale += 1
            if stale >= fc.patience:
                break
            if time_limit is not None and time.perf_counter() - started > time_limit:
                break
        net.load_state_dict(best[2])
        net.to("cpu").eval()
        self.net = net
        self.meta = {
            "best_epoch": best[1],
            "best_val_map": best[0][0],
            "history": history,
            "n_train_models": len(all_nets),
            "n_train_tasks": len(keys),
            "n_extra_models": len(keep),
            "n_extra_dropped": len(extra_tasks) - len(keep),
            "probe_init": "data" if probe_images is not None and len(probe_images) else "noise",
            "basis_init": "data" if net.started_on_data else "random",
            "train_tasks": sorted({canonical_name(Task(k)) for k in keys}),  # type: ignore
            "val_tasks": sorted({t.name for t in val[1]}) if val is not None else [],
            "fit_seconds": time.perf_counter() - started,
        }
        return self

    # ---------------------------------------------------------------- use
    def _need(self) -> LPSNet:
        if self.net is None:
            raise ParamsimError("this LPS model is not fitted; call fit or LPS.load first")
        return self.net

    def check(self, networks: Sequence[Network]) -> str | None:
        return self._need().check(networks)

    def embed(
        self, networks: Sequence[Network], device: str | torch.device | None = None
    ) -> np.ndarray:
        """float32 unit embeddings (n, out_dim); cosine similarity = dot product.

        `device` (cpu by default) computes them there; the model stays on the CPU."""
        net = self._need()
        dev = resolve_device(device)
        net.to(dev)
        try:
            emb = net.embed(networks)
        finally:
            net.to("cpu")
        bad = first_nonfinite_row(emb)
        if bad is not None:  # finite weights so large that float32 arithmetic overflows
            raise ParamsimError(
                f"model {bad + 1} of the {len(networks)} given has no finite LPS embedding: "
                f"its weights (largest |w| {networks[bad].largest_weight:.3g}) overflow float32 "
                "arithmetic; check or rescale that checkpoint"
            )
        return emb

    # ---------------------------------------------------------------- save / load
    def save(self, directory: str | Path) -> Path:
        """Write `lps.safetensors` (tensors only) and `lps.json` (config, format version);
        each file lands atomically."""
        from safetensors.torch import save_file

        net = self._need()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
        doc = {
            "format": "paramsim-lps",
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "fit_config": self.fit_config.to_dict(),
            "meta": self.meta,
        }
        with atomic_path(d / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp))
        atomic_write(d / CONFIG_FILE, json.dumps(finite_json(doc), indent=1, allow_nan=False))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> LPS:
        """Read a saved model; never unpickles. Incompatible versions raise ParamsimError."""
        from safetensors.torch import load_file

        d = Path(directory)
        cfile, wfile = d / CONFIG_FILE, d / WEIGHTS_FILE
        if not cfile.is_file() or not wfile.is_file():
            raise ParamsimError(
                f"{d} is not a saved LPS model (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                "create one with `paramsim fit ZOO --out DIR`"
            )
        doc = _read_doc(cfile)
        try:
            cfg = LPSConfig.from_dict(doc["config"])
            fit_config = FitConfig.from_dict(doc.get("fit_config", {}))
        except KeyError as exc:
            raise ParamsimError(f"{cfile} has no {exc} section; refit the model") from exc
        except ParamsimError as exc:
            raise ParamsimError(f"{cfile}: {exc}; refit the model") from exc
        meta = doc.get("meta", {})
        if not isinstance(meta, dict):
            raise ParamsimError(f"{cfile}: meta must be a JSON object; refit the model")
        net = LPSNet(cfg)
        try:
            state = load_file(str(wfile))
            net.load_state_dict(state)
        except Exception as exc:  # safetensors and torch name the problem in many lines
            why = " ".join(str(exc).split())[:300]
            raise ParamsimError(
                f"cannot load weights from {wfile}: {why}; refit the model"
            ) from exc
        bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
        if bad:
            raise ParamsimError(f"{wfile} holds non-finite values in {bad[0]}; refit the model")
        net.eval()
        return cls(cfg, fit_config, net, meta)


MAX_CONFIG_BYTES = 64 * 2**20  # an lps.json is a few KB; history of many epochs stays far below


def _read_doc(cfile: Path) -> dict:
    """The top level of lps.json, checked: an object of the known sections, this format."""
    try:
        if cfile.stat().st_size > MAX_CONFIG_BYTES:
            raise ParamsimError(f"{cfile} is larger than an LPS config can be; refit the model")
        # bare NaN from older saves reads as None; config fields then fail their type check
        doc = json.loads(cfile.read_text(), parse_constant=lambda _name: None)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        why = " ".join(str(exc).split())[:200]
        raise ParamsimError(f"cannot read {cfile}: {why}; refit the model") from exc
    if not isinstance(doc, dict) or doc.get("format") != "paramsim-lps":
        raise ParamsimError(f"{cfile} is not a paramsim LPS config; refit the model")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise ParamsimError(
            f"{cfile} is LPS format version {version!r}; this paramsim reads version "
            f"{FORMAT_VERSION}; refit with `paramsim fit` or use a matching paramsim"
        )
    unknown = sorted(set(doc) - {"format", "format_version", "config", "fit_config", "meta"})
    if unknown:
        raise ParamsimError(f"{cfile} has unknown sections {unknown}; refit the model")
    return doc

"""OUT/README.md of `paramsim reproduce`: every table and picture, with what they mean."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from paramsim.atomic import atomic_write


def _f(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _candidates(per_task: Any) -> str:
    """How many of each task's models were candidates, in words (older results: all)."""
    if not per_task:
        return "all of them"
    return f"{per_task} of each task's models, drawn once for every target"


def relation_table(rel: Mapping[str, Any]) -> str:
    lines = [
        "| method | Spearman ρ with shared classes | cophenetic corr. with truth | "
        "mean sim., 0 shared | mean sim., 1 shared | most related pair | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rel.get("methods", {}).items():
        by = r.get("mean_similarity_by_shared_classes", {})
        top = r.get("most_related") or [{}]
        pair = " / ".join(top[0].get("tasks", []))
        lines.append(
            f"| {name} | {_f(r.get('spearman'))} | {_f(r.get('cophenetic_vs_truth'))} | "
            f"{_f(by.get('0'))} | {_f(by.get('1'))} | {pair} | {r.get('source', '')} |"
        )
    for name, reason in rel.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {reason} | | | | | |")
    return "\n".join(lines)


def transfer_checks(tr: Mapping[str, Any]) -> list[str]:
    """One line per method, K and rule: do the issue's targets hold, measured, not assumed."""
    out = []
    from paramsim.use.transfer import rule_views

    for name, entry in tr.get("methods", {}).items():
        for k, v in entry.get("shots", {}).items():
            for rule, rv in rule_views(v):
                g = rv["gain_over_random"]
                share = rv.get("oracle_gain_captured")
                rho = v["spearman"]["mean"]
                ok_ci = g["lo"] is not None and g["lo"] > 0
                ok_share = share is not None and share >= 0.5
                ok_rho = rho is not None and rho > 0
                out.append(
                    f"- {name}, K={k}, {rule} rule: gain over a random source "
                    f"{_f(g['mean'], '+.3f')} "
                    f"(95% bootstrap CI {_f(g['lo'], '+.3f')} to {_f(g['hi'], '+.3f')}; "
                    f"t-interval {_f(g['t_lo'], '+.3f')} to {_f(g['t_hi'], '+.3f')}) "
                    f"{'excludes' if ok_ci else 'does not exclude'} zero; it captures "
                    f"{_f(share, '.2f')} of the oracle's gain "
                    f"({'at least' if ok_share else 'under'} "
                    f"half); similarity-accuracy Spearman {_f(rho)} "
                    f"({'positive' if ok_rho else 'not positive'})."
                )
    return out


def format_readme(parts: Mapping[str, Any]) -> str:
    from paramsim.eval.report import format_table
    from paramsim.use.transfer import estimator_notes, format_cost_table, format_transfer_table

    zoo = parts["zoo"]
    ev, rel, tr = parts["eval"], parts["relate"], parts["transfer"]
    timings = parts["timings"]
    cfg = parts["config"]
    summ = zoo.summary()
    archs = ", ".join(f"{n} x {a}" for a, n in summ["architectures"].items())
    tcfg = tr.get("config", {})
    p = ev.get("protocol", {})
    lines = [
        "# paramsim: results of `paramsim reproduce`",
        "",
        f"Zoo `{summ['recipe']}` ({zoo.path}): {summ['models']} models on {summ['tasks']} "
        f"binary tasks ({archs}); mean test accuracy {summ['test_acc'].get('mean', 0):.3f}. "
        "Every number below was measured by this run; the machine, its load and the time are "
        "at the end.",
        "",
        "## 1. Which method recognises a model's task from its weights",
        "",
        f"{ev.get('splits')} random task splits (seed {ev.get('seed')}); per split "
        f"{p.get('n_train_tasks')} training, {p.get('n_val_tasks')} validation and "
        f"{p.get('n_test_tasks')} held-out tasks. Learned methods never see held-out tasks; "
        "fixed methods are scored on the same held-out models. Mean ± std over splits.",
        "",
        format_table(ev),
        "",
        "mAP / rank-k: retrieval of same-task models among held-out tasks; AUC: same-task "
        "pair verification; relation ρ: Spearman correlation of held-out task-pair similarity "
        "with the number of shared classes; seen-task acc: classification of withheld models "
        "of training tasks.",
        "",
        "![CMC curves](eval/cmc.png)",
        "",
        "## 2. How the tasks relate",
        "",
        "Task-by-task similarity is the mean over the two tasks' models; the ground truth is "
        "the number of classes two tasks share. The dendrogram is average linkage on "
        "1 − similarity; the map is classical MDS of 1 − similarity over all models, "
        "coloured by task. A learned method here was fitted on all tasks (seen tasks; "
        "section 1 gives its relation ρ on held-out tasks).",
        "",
        relation_table(rel),
        "",
    ]
    shown = next(iter(rel.get("methods", {})), None)
    if shown:
        lines += [
            f"Pictures for `{shown}` (the other methods' are in `relate/<method>/`):",
            "",
            f"![task similarity and truth](relate/{shown}/relation_matrix.png)",
            "",
            f"![dendrograms](relate/{shown}/dendrogram.png)",
            "",
            f"![model map](relate/{shown}/map.png)",
            "",
        ]
    lines += [
        "## 3. Choosing a source model for few-shot transfer",
        "",
        f"For every target task, {tcfg.get('repeats')} random draws of K examples per class "
        f"(K in {tcfg.get('shots')}) from its training split. A probe model (the zoo's "
        f"architecture, {tcfg.get('probe_steps')} full-batch Adam steps) is trained on them "
        "and embedded; the candidate sources (the stored models of *other* tasks, "
        f"{_candidates(tcfg.get('sources_per_task'))}) are ranked by similarity to it and "
        "one is picked: by the *task* rule, the task whose models are on average most similar, "
        "then its most similar model; by the *model* rule, the single most similar model "
        f"(primary rule: {tcfg.get('select', 'model')}; both are scored on the same fine-tuned "
        "sources). The pick is fine-tuned on the same examples (all layers, output layer "
        f"{'reset to zero' if tcfg.get('head') == 'reset' else 'kept'}, "
        f"{tcfg.get('finetune_steps')} full-batch Adam steps, lr {tcfg.get('finetune_lr')}), "
        "then tested on the task's test split. Scratch: the probe itself. Random: the mean "
        "over all candidates, each fine-tuned the same way. Oracle: the best of "
        "them in hindsight. Learned methods are fitted per fold of tasks "
        f"({tcfg.get('folds')} folds) without the target's fold. Accuracies are means over "
        "target tasks; the CI is a bootstrap over target tasks.",
        "",
        format_transfer_table(tr),
        "",
        "Validation oracle: the source best on a held-out part of the target's training split "
        "(disjoint from the shots), scored on the test split: the ceiling a user could reach. "
        "Weighted τ: scipy's weighted Kendall tau between a rule's scores and the fine-tuned "
        "accuracy of every candidate, averaged over draws and tasks. Top-1 regret: oracle "
        "minus chosen.",
        "",
        *transfer_checks(tr),
        "",
        *([*estimator_notes(tr), ""] if estimator_notes(tr) else []),
        *([format_cost_table(tr), ""] if format_cost_table(tr) else []),
        "![transfer](transfer/transfer.png)",
        "",
        "## Time and settings",
        "",
        "| stage | seconds, this run | seconds when last computed |",
        "|---|---|---|",
        *[
            f"| {k} | {v:.1f} | {_f(timings['computed'].get(k), '.1f')} |"
            for k, v in timings["this_run"].items()
        ],
        "",
        f"Machine: {timings['machine'].get('cpus')} CPUs, "
        f"{timings['machine'].get('torch_threads')} torch threads, 1-minute load average "
        f"{_f(timings['machine'].get('load_average_1min'), '.1f')} at the end of the run "
        "(other jobs sharing the CPUs inflate every time).",
        "",
        "Stages are cached (eval/results.json, relate/*/relation.json, transfer/transfer.json,"
        " keyed by their settings); a second run reuses them. Settings: "
        f"`{ {k: v for k, v in cfg.to_dict().items() if k != 'transfer'} }`.",
        "",
    ]
    return "\n".join(lines)


def write_readme(parts: Mapping[str, Any], out: str | Path) -> Path:
    path = Path(out) / "README.md"
    atomic_write(path, format_readme(parts))
    return path

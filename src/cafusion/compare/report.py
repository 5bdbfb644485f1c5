"""The report of a comparison, built from whatever finished result files are under ``--out``.

Because it reads only the per-run files, running the report after every shard has finished (or
``--report-only``) merges the shards, and the report of a merged set equals that of a single
unsharded run. Writes report.json (every per-seed result and every p-value), report.md, runs.csv
(the compact row of every run, plan.compact) and the figures (plots.py). Without ``runs/`` the
report is rebuilt from runs.csv alone, to the same report.json and report.md.
"""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from cafusion._files import atomic_write_text
from cafusion.compare import stats
from cafusion.compare.config import BASELINES
from cafusion.compare.plan import RUNS_CSV, iter_results, rows_csv, stored_settings
from cafusion.compare.plots import cd_figure_name
from cafusion.compare.published import published_accuracy

UNDEFINED_CELL = "n/a (identical differences)"
UNDEFINED_NOTE = (
    "p=n/a (identical differences): every seed's paired difference is the same non-zero amount (often one "
    "test series), so the paired t-test has no variance to work with and is undefined. It is not evidence "
    "of a strong effect; read the win/tie/loss and the size of the difference instead."
)
CONSISTENCY = (
    "caft_sum vs cbam is a consistency check, not a finding: with T = 1 and a sigmoid gate caft_sum computes "
    "CBAM's channel attention, so the two should differ only by their initial block weights. The seed's own "
    "contribution is the router and the temperature: caft has to beat cbam (and caft_sum) for them to count."
)
HOLM_NOTE = (
    "Holm's correction per (data set, model) table: its family is every distinct pair of variants tested in "
    "that table (a vs b and b vs a are one test); undefined tests do not count"
)
EFFECT_NOTE = (
    "effect size: the mean paired difference in points with its 95% t interval over seeds, and Cohen's d_z "
    "(mean / sd of the paired differences; n/a when they have no spread)"
)
RANKS_NOTE = (
    f"across data sets, per model: mean ranks of the mean accuracies, the Friedman test, and aeon's "
    f"Wilcoxon-Holm critical difference (alpha {stats.CD_ALPHA}): one-sided Wilcoxon signed-rank tests over "
    f"data sets between variants in rank order, Holm-adjusted over all pairs, and the cliques of aeon's "
    f"diagram; it needs at least {stats.CD_MIN_DATASETS} data sets and {stats.CD_MIN_VARIANTS} variants"
)
# per block and run, the mean gradient norm of the first 5 and the last 10 epochs (plan.compact)
_GRADIENTS = ("router_grad_early", "router_grad_late", "mlp_grad_early", "mlp_grad_late")
NO_AEON_NOTE = (
    "aeon is not installed (the timeseries extra): no critical-difference diagram is drawn; the ranks, "
    "tests and cliques are computed without it"
)


def build_report(out: Path, baselines: tuple[str, ...] = BASELINES) -> dict[str, Any]:
    """Group every result under ``out`` by (dataset, model) and compute the statistics.

    ``baselines``: the variants every other one is paired against (those that are present).
    """
    results = list(iter_results(out))
    if not results:
        raise ValueError(f"--out {str(out)!r} holds no finished runs (runs/*.json or {RUNS_CSV}) to report on")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["dataset"], r["settings"]["model"])].append(r)
    tables = [_group(dataset, model, runs, baselines) for (dataset, model), runs in sorted(groups.items())]
    by_model: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for t in tables:
        by_model[t["model"]][t["dataset"]] = {v["variant"]: v["acc"]["mean"] for v in t["variants"]}
    return {
        "format": "cafusion-compare/1",
        "out": str(out),
        "runs": len(results),
        "baselines": list(baselines),
        "tables": tables,
        "ranking": {model: stats.ranks(table) for model, table in sorted(by_model.items())},
        "collapse": _collapse_overall(tables),
        "notes": {
            "tests": f"paired t-test below {stats.WILCOXON_MIN} seeds, Wilcoxon signed-rank from there",
            "holm": HOLM_NOTE,
            "effect": EFFECT_NOTE,
            "ranks": RANKS_NOTE,
            **({} if importlib.util.find_spec("aeon") else {"cd_diagram": NO_AEON_NOTE}),
            **({"consistency": CONSISTENCY} if _ran_together(tables, "caft_sum", "cbam") else {}),
        },
    }


def _ran_together(tables: list[dict[str, Any]], *variants: str) -> bool:
    """Whether some (data set, model) table holds every one of ``variants``."""
    return any(set(variants) <= {v["variant"] for v in t["variants"]} for t in tables)


def _group(dataset: str, model: str, runs: list[dict[str, Any]], baselines: tuple[str, ...]) -> dict[str, Any]:
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_variant[r["settings"]["variant"]].append(r)
    order = [v for v in _variant_order(runs) if v in by_variant]
    acc = {v: {r["settings"]["seed"]: r["test_acc"] for r in by_variant[v]} for v in order}
    first = runs[0]
    variants = []
    for v in order:
        rs = sorted(by_variant[v], key=lambda r: r["settings"]["seed"])
        entry: dict[str, Any] = {
            "variant": v,
            "attention": rs[0]["settings"]["attention"],
            "attention_kwargs": rs[0]["settings"]["attention_kwargs"],
            "seeds": [r["settings"]["seed"] for r in rs],
            "test_acc": [r["test_acc"] for r in rs],
            "acc": stats.describe([r["test_acc"] for r in rs]),
            "params": rs[0]["params"],
            "seconds_per_epoch": sum(r["seconds_per_epoch"] for r in rs) / len(rs),
            "versus": {b: stats.paired(acc[v], acc[b]) for b in baselines if b in acc and b != v},
            "budget_acc": _budget_means(rs),
        }
        if any("router" in r for r in rs):
            entry["router"] = _router_summary(rs)
        variants.append(entry)
    family = _holm_family(variants)
    # Published numbers belong to the archive's own train/test split; a user's file has none.
    published = published_accuracy(dataset, model) if first.get("published_split", True) else None
    return {
        "dataset": dataset,
        "model": model,
        "data": first["data"],
        "published_split": first.get("published_split", True),
        "epochs": sorted({r["settings"]["epochs"] for r in runs}),
        "batch_size": sorted({r["batch_size"] for r in runs}),
        # ucr: the normalisation applied ("series" or "none"); more than one means mixed runs
        "norm": sorted({n for n in (stored_settings(r).get("norm") for r in runs) if n is not None}),
        "published_acc": published,
        "holm_family": family,
        "variants": variants,
    }


def _holm_family(variants: list[dict[str, Any]]) -> int:
    """Sets ``p_holm`` in every ``versus`` entry of one table; returns the family size m.

    The family is the distinct pairs tested in the table: a vs b and b vs a pair the same seeds, so
    they have the same two-sided p and count once.
    """
    pairs: dict[frozenset[str], float | None] = {}
    for v in variants:
        for b, c in v["versus"].items():
            if c is not None:
                pairs.setdefault(frozenset((v["variant"], b)), c["p"])
    keys = list(pairs)
    adjusted = dict(zip(keys, stats.holm([pairs[k] for k in keys]), strict=True))
    for v in variants:
        for b, c in v["versus"].items():
            if c is not None:
                c["p_holm"] = adjusted[frozenset((v["variant"], b))]
    return sum(p is not None for p in pairs.values())


def _collapse_overall(tables: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model and softmax-router variant, over every data set, block and seed: how many routers collapsed."""
    out: dict[str, dict[str, Any]] = {}
    for t in tables:
        for v in t["variants"]:
            for r in v.get("router", {}).values():
                if not r["w_avg_per_seed"]:
                    continue  # sum fusion: no router
                entry = out.setdefault(f"{t['model']} {v['variant']}", {"routers": 0, "collapsed": 0, "datasets": []})
                entry["routers"] += r["seeds"]
                entry["collapsed"] += r["collapsed_seeds"]
                if t["dataset"] not in entry["datasets"]:
                    entry["datasets"].append(t["dataset"])
    return out


def _variant_order(runs: list[dict[str, Any]]) -> list[str]:
    """Baselines first in their fixed order, then the rest alphabetically."""
    names = {r["settings"]["variant"] for r in runs}
    return [b for b in BASELINES if b in names] + sorted(names - set(BASELINES))


def _budget_means(runs: list[dict[str, Any]]) -> dict[str, float]:
    common = set.intersection(*(set(r.get("budget_acc", {})) for r in runs))
    return {b: sum(r["budget_acc"][b] for r in runs) / len(runs) for b in sorted(common, key=int)}


def _router_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per block, over seeds: mean w_avg, share preferring max, collapsed seeds, T, gate saturation."""
    blocks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        for name, b in r.get("router", {}).items():
            blocks[name].append(b)
    out = {}
    for name, bs in blocks.items():
        w = [b["w_avg_mean"] for b in bs if b["w_avg_mean"] is not None]
        pm = [b["prefer_max"] for b in bs if b["prefer_max"] is not None]
        t = [b["T"] for b in bs if b["T"] is not None]
        out[name] = {
            "w_avg_per_seed": w,
            "prefer_max_mean": sum(pm) / len(pm) if pm else None,
            "collapsed_seeds": sum(bool(b["collapsed"]) for b in bs),
            "seeds": len(bs),
            "T_mean": sum(t) / len(t) if t else None,
            "gate_saturation_mean": sum(b["gate_saturation"] for b in bs) / len(bs),
            "input_max_over_avg": sum(b["input_max_abs"] / max(b["input_avg_abs"], 1e-12) for b in bs) / len(bs),
            "w_avg_epoch1": [b["w_avg_epoch1"] for b in bs if b["w_avg_epoch1"] is not None],
            "collapse_epoch": [b["collapse_epoch"] for b in bs],
            **{k: _mean_of([b[k] for b in bs]) for k in _GRADIENTS},
        }
    return out


def _mean_of(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def write_report(out: Path, report: dict[str, Any], figures: bool = True) -> list[Path]:
    """report.json, report.md, runs.csv and (if matplotlib is there) the PNGs; returns the paths."""
    written = [out / "report.json", out / "report.md", out / RUNS_CSV]
    rows = list(iter_results(out))  # read before anything is written: runs.csv may be the input
    # compact JSON: per-seed results and every test, without indentation (runs.csv has them readable)
    atomic_write_text(written[0], json.dumps(report, sort_keys=True, separators=(",", ":")) + "\n")
    pngs: list[Path] = []
    if figures:
        from cafusion.compare.plots import write_figures

        pngs = write_figures(out, report)
    atomic_write_text(written[1], render_markdown(report, [p.name for p in pngs]))
    atomic_write_text(written[2], rows_csv(rows))
    return written + pngs


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _versus(entry: dict[str, Any], baseline: str) -> str:
    v = entry["versus"].get(baseline)
    if v is None:
        return "–"
    p = UNDEFINED_CELL if v["p"] is None else f"{v['p']:.3g}"
    if v.get("p_holm") is not None:
        p += f", Holm {v['p_holm']:.3g}"
    ci = v["ci95"]
    dz = "n/a" if v.get("d_z") is None else f"{v['d_z']:.2f}"
    return (
        f"{100 * v['mean_diff']:+.2f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}], d_z {dz} "
        f"(p={p}; {v['win']}/{v['tie']}/{v['loss']})"
    )


def _any_undefined(report: dict[str, Any]) -> bool:
    return any(
        c is not None and c["p"] is None for t in report["tables"] for v in t["variants"] for c in v["versus"].values()
    )


def _summary(report: dict[str, Any]) -> list[str]:
    """One table per model: data sets x variants, mean ± std, with the published mean beside them."""
    lines: list[str] = []
    models = sorted({t["model"] for t in report["tables"]})
    for model in models:
        tables = [t for t in report["tables"] if t["model"] == model]
        variants: list[str] = []
        for t in tables:
            variants += [v["variant"] for v in t["variants"] if v["variant"] not in variants]
        lines += [
            f"## Summary · {model}: test accuracy %, mean ± std over seeds (seeds in brackets where not all agree)",
            "",
            "| data set | published | " + " | ".join(variants) + " |",
            "|---|---|" + "---|" * len(variants),
        ]
        most = max(v["acc"]["n"] for t in tables for v in t["variants"])
        for t in tables:
            by = {v["variant"]: v for v in t["variants"]}
            cells = []
            for name in variants:
                v = by.get(name)
                n = "" if v is None or v["acc"]["n"] == most else f" ({v['acc']['n']})"
                cells.append("–" if v is None else f"{_pct(v['acc']['mean'])} ± {100 * v['acc']['std']:.2f}{n}")
            pub = "–" if t["published_acc"] is None else f"{t['published_acc']:.1f}"
            lines.append(f"| {t['dataset']} | {pub} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def render_markdown(report: dict[str, Any], figures: list[str]) -> str:
    baselines = report.get("baselines", list(BASELINES))
    lines = [
        "# cafusion compare report",
        "",
        f"{report['runs']} finished runs. Accuracy: test accuracy (%) of the model with the lowest training loss, "
        "mean ± std over seeds, with the 95% t interval. Versus a baseline: mean paired difference in points "
        "with its 95% t interval, Cohen's d_z, the p-value of the paired test "
        f"({report['notes']['tests']}) with its Holm-corrected value, and win/tie/loss over seeds.",
        "",
        f"{report['notes']['holm']}. The {report['notes']['effect']}.",
        "",
    ]
    if "consistency" in report["notes"]:
        lines += [f"> {report['notes']['consistency']}", ""]
    if _any_undefined(report):
        lines += [UNDEFINED_NOTE, ""]
    lines += _summary(report)
    for t in report["tables"]:
        pub = "" if t["published_acc"] is None else f"; published {t['model']} mean: {t['published_acc']:.1f}%"
        ran = {v["variant"] for v in t["variants"]}
        shown = [b for b in baselines if b in ran and len(ran) > 1]  # only the baselines this table has
        lines += [
            f"## {t['dataset']} · {t['model']}",
            "",
            f"{t['data']}. Epochs {t['epochs']}, batch {t['batch_size']}{pub}."
            + (f" Holm family: the {t['holm_family']} tests of this table." if t.get("holm_family") else ""),
            "",
            "| variant | seeds | accuracy | 95% CI | " + "".join(f"vs {b} | " for b in shown) + "params | s/epoch |",
            "|---|---|---|---|" + "---|" * len(shown) + "---|---|",
        ]
        for v in t["variants"]:
            a = v["acc"]
            ci = "–" if a["ci95"] is None else f"[{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}]"
            lines.append(
                f"| {v['variant']} | {a['n']} | {_pct(a['mean'])} ± {100 * a['std']:.2f} | {ci} | "
                + "".join(f"{_versus(v, b)} | " for b in shown)
                + f"{v['params']:,} | "
                f"{v['seconds_per_epoch']:.3f} |"
            )
        routers = [v for v in t["variants"] if v.get("router")]
        if routers:
            lines += [
                "",
                "Router (test set, mean over seeds): w_avg per seed, share of samples preferring max, "
                "seeds collapsed (w_avg < 0.01 or > 0.99), T, gate saturation, mean |max| / mean |avg| statistic "
                "at the block's input; from training: w_avg after epoch 1, the epoch from which w_avg stayed "
                "collapsed (per seed), and the router's gradient norm per step, mean of the first 5 and the last "
                "10 epochs (with the block's MLP's in brackets, a control: all gradients shrink as the loss does).",
                "",
                "| variant | block | w_avg per seed | prefer max | collapsed | T | gate sat. | max/avg "
                "| w_avg ep. 1 | collapsed from epoch | router grad first → last |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for v in routers:
                for block, r in v["router"].items():
                    w = ", ".join(f"{x:.3f}" for x in r["w_avg_per_seed"]) or "– (sum fusion)"
                    pm = "–" if r["prefer_max_mean"] is None else f"{100 * r['prefer_max_mean']:.0f}%"
                    w1 = ", ".join(f"{x:.2f}" for x in r.get("w_avg_epoch1", [])) or "–"
                    since = ", ".join("–" if e is None else str(e) for e in r.get("collapse_epoch", [])) or "–"
                    early, late = r.get("router_grad_early"), r.get("router_grad_late")
                    grad = "–" if not early or late is None else f"{early:.2g} → {late:.2g}"
                    m_early, m_late = r.get("mlp_grad_early"), r.get("mlp_grad_late")
                    if m_early and m_late is not None:
                        grad += f" (MLP {m_early:.2g} → {m_late:.2g})"
                    lines.append(
                        f"| {v['variant']} | {block} | {w} | {pm} | {r['collapsed_seeds']}/{r['seeds']} | "
                        f"{r['T_mean']:.3f} | {100 * r['gate_saturation_mean']:.1f}% | {r['input_max_over_avg']:.2f} | "
                        f"{w1} | {since} | {grad} |"
                    )
        lines.append("")
    for model, rank in report["ranking"].items():
        if rank is not None:
            lines += _ranking(model, rank, report["notes"].get("cd_diagram"), figures)
    if report.get("collapse"):
        lines += [
            "## Router collapse over every data set",
            "",
            "| model variant | routers (blocks x seeds) | collapsed on the test set (w_avg < 0.01 or > 0.99) "
            "| data sets |",
            "|---|---|---|---|",
        ]
        for name, c in report["collapse"].items():
            share = 100 * c["collapsed"] / max(c["routers"], 1)
            lines.append(f"| {name} | {c['routers']} | {c['collapsed']} ({share:.0f}%) | {len(c['datasets'])} |")
        lines.append("")
    cd_names = {cd_figure_name(m) for m, r in report["ranking"].items() if r is not None and r["cd"] is not None}
    rest = [name for name in figures if name not in cd_names]  # the CD diagrams are in their ranking sections
    if rest:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in rest] + [""]
    return "\n".join(lines)


def _ranking(model: str, rank: dict[str, Any], no_diagram: str | None, figures: list[str]) -> list[str]:
    """One model's ranks over data sets, the Friedman p and the critical difference (or why there is none)."""
    order = sorted(rank["mean_rank"].items(), key=lambda kv: kv[1])
    friedman = "–" if rank["friedman_p"] is None else f"{rank['friedman_p']:.3g}"
    lines = [
        f"## Ranking · {model} over {len(rank['datasets'])} data sets",
        "",
        "Mean rank of the mean accuracy (1 = best): " + ", ".join(f"{v} {r:.2f}" for v, r in order) + ".",
        f"Friedman p = {friedman}.",
    ]
    cd = rank["cd"]
    if cd is None:
        return [*lines, f"No critical-difference diagram: {rank['cd_skipped']}.", ""]
    groups = "; ".join("{" + ", ".join(c) + "}" for c in cd["cliques"]) or "none (every pair differs)"
    lines += [
        f"Critical difference (aeon's Wilcoxon-Holm, alpha {cd['alpha']}): cliques of variants not shown to differ: "
        f"{groups}.",
        "",
        f"| better rank | worse rank | one-sided Wilcoxon p | Holm ({len(cd['pairs'])} pairs) |",
        "|---|---|---|---|",
        *(f"| {p['better']} | {p['worse']} | {p['p']:.3g} | {p['p_holm']:.3g} |" for p in cd["pairs"]),
        "",
    ]
    name = cd_figure_name(model)
    if name in figures:
        lines += [f"![{name}]({name})", ""]
    elif no_diagram:
        lines += [f"{no_diagram}.", ""]
    return lines

"""The demo's report: a JSON-ready dict, the comparison table, PNG plots and a markdown summary.

Kept apart from the training in ``demo.py`` so the report format can be read (and tested) on its
own. Wall-clock numbers live under ``"timing"`` only, so the rest of ``report.json`` is identical
between two runs with the same seed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cafusion.diagnostics import BlockStats, FusionMonitor, format_table
from cafusion.diagnostics.export import to_dict
from cafusion.training.demo import DIAGNOSED, MONITORED, VARIANTS, Digits, RunResult, mean_std

PLOTS = {
    "accuracy": "accuracy.png",
    "fusion_hist": "fusion_hist.png",
    "class_w_avg": "class_w_avg.png",
    "training_curves": "training_curves.png",
}
CHECKPOINT = "caft_softmax_T.safetensors"


def answers(
    test: Sequence[BlockStats],
    history: Sequence[BlockStats],
    initial_t: float,
    low: float = 0.01,
    high: float = 0.99,
) -> list[str]:
    """Plain-language answers to the three questions, one line per block and question; ``low``/``high``
    are the gate limits the monitor counted saturation against."""
    lines = []
    for s in test:
        if s.prefer_max is None or s.w_avg_mean is None or s.w_avg_std is None:
            continue
        if s.prefer_max < 0.05:
            verdict = "always prefers avg"
        elif s.prefer_max > 0.95:
            verdict = "always prefers max"
        else:
            verdict = "varies across samples"
        lines.append(
            f"router {s.block}: {verdict} (w_avg {s.w_avg_mean:.3f} ± {s.w_avg_std:.3f}, "
            f"{100 * s.prefer_max:.1f}% of test samples prefer max)"
        )
    for s in test:
        state = "saturated" if s.saturation > 0.5 else "partly saturated" if s.saturation > 0.05 else "not saturating"
        lines.append(
            f"gate {s.block}: {state} ({100 * s.gate_low:.2f}% of ca < {low:g}, {100 * s.gate_high:.2f}% > {high:g})"
        )
    for s in test:
        steps = [h.T for h in history if h.block == s.block and h.T is not None]
        path = " -> ".join(f"{t:.3f}" for t in steps) if steps else "-"
        lines.append(
            f"temperature {s.block}: {initial_t:.3f} at init -> {s.T:.4f} after training "
            f"(after each of the {len(steps)} epochs: {path})"
        )
    return lines


def build_report(
    args: argparse.Namespace,
    data: Digits,
    results: Sequence[RunResult],
    monitors: Mapping[str, FusionMonitor],
    first: Mapping[str, RunResult],
    kernel_seconds: float | None = None,
) -> dict[str, Any]:
    """Everything report.json holds; ``kernel_seconds`` is the one-time load (or compile) of the CPU
    kernels, timed apart from the epochs (None when they are switched off)."""
    variants: list[dict[str, Any]] = []
    timing: dict[str, dict[str, Any]] = {}
    for name, attention, kwargs, description in VARIANTS:
        runs = [r for r in results if r.variant == name]
        mean, std = mean_std([r.accuracy for r in runs])
        variants.append(
            {
                "name": name,
                "description": description,
                "attention": attention,
                "attention_kwargs": kwargs,
                "params": runs[0].params,
                "seeds": [r.seed for r in runs],
                "accuracy": [r.accuracy for r in runs],
                "accuracy_mean": mean,
                "accuracy_std": std,
                "final_train_loss": [r.loss for r in runs],
            }
        )
        epochs = [t for r in runs for t in r.epoch_seconds]
        timing[name] = {"epoch_seconds_mean": sum(epochs) / len(epochs)}
    timing["native_kernels"] = {"load_seconds": kernel_seconds, "in_epoch_times": False}
    diagnostics = {}
    for name in MONITORED:
        test = to_dict(monitors[name])
        diagnostics[name] = {
            "seed": first[name].seed,
            "test": test,
            "training": [s.as_dict() for s in first[name].history],
        }
    test_stats = monitors[DIAGNOSED].summary()
    limits = {"low": monitors[DIAGNOSED].low, "high": monitors[DIAGNOSED].high}
    return {
        "config": {
            "quick": args.quick,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "first_seed": args.seed,
            "batch_size": args.batch_size,
            "train_size": len(data.y_train),
            "test_size": len(data.y_test),
            "dataset": "sklearn.datasets.load_digits (8x8, 10 classes), stratified 80/20 split, random_state=0",
        },
        "variants": variants,
        "diagnostics": diagnostics,
        "diagnosis": {
            "variant": DIAGNOSED,
            "answers": answers(test_stats, first[DIAGNOSED].history, 1.0, **limits),
            "gate_limits": limits,
        },
        "timing": timing,
    }


def _accuracy_cell(variant: Mapping[str, Any]) -> str:
    """``97.50% ± 0.40`` over several seeds; one seed has no spread to show."""
    if len(variant["accuracy"]) < 2:
        return f"{100 * variant['accuracy_mean']:.2f}%"
    return f"{100 * variant['accuracy_mean']:.2f}% ± {100 * variant['accuracy_std']:.2f}"


def comparison_rows(report: Mapping[str, Any], markdown: bool) -> str:
    """Variant, parameters, test accuracy mean ± std over seeds, seconds per epoch."""
    one_seed = all(len(v["accuracy"]) < 2 for v in report["variants"])
    headers = ("model", "params", "test acc (1 seed)" if one_seed else "test acc (mean ± std)", "s/epoch", "block")
    rows = [
        (
            v["name"],
            f"{v['params']:,}",
            _accuracy_cell(v),
            f"{report['timing'][v['name']]['epoch_seconds_mean']:.3f}",
            v["description"],
        )
        for v in report["variants"]
    ]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|---|---:|---:|---:|---|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 4) else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)]
    return "\n".join(line.rstrip() for line in lines)


def _accuracy_plot(report: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    names = [v["name"] for v in report["variants"]]
    means = [100 * v["accuracy_mean"] for v in report["variants"]]
    stds = [100 * v["accuracy_std"] for v in report["variants"]]
    ax.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    low = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    seeds = report["config"]["seeds"]
    ax.set_title(
        "digits test accuracy, 1 seed" if seeds == 1 else f"digits test accuracy, mean ± std over {seeds} seeds"
    )
    fig.savefig(path, dpi=100)


def write_report(
    out: Path,
    report: Mapping[str, Any],
    results: Sequence[RunResult],
    monitors: Mapping[str, FusionMonitor],
    first: Mapping[str, RunResult],
) -> Path:
    """Write report.json, the PNGs, the softmax model's checkpoint and report.md; returns report.md."""
    from cafusion.diagnostics.plots import plot_class_means, plot_fusion_histograms, plot_training_curves
    from cafusion.models.checkpoint import save_model

    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    test = monitors[DIAGNOSED].summary()
    _accuracy_plot(report, out / PLOTS["accuracy"])
    plot_fusion_histograms(test, out / PLOTS["fusion_hist"], title=f"{DIAGNOSED}: w_avg on the test split")
    plot_class_means(test, out / PLOTS["class_w_avg"], title=f"{DIAGNOSED}: mean w_avg per digit")
    plot_training_curves(
        first[DIAGNOSED].history, out / PLOTS["training_curves"], title=f"{DIAGNOSED} during training", x_label="epoch"
    )
    acc = first[DIAGNOSED].accuracy
    save_model(first[DIAGNOSED].model, out / CHECKPOINT, extra={"test_accuracy": acc, "seed": first[DIAGNOSED].seed})

    cfg = report["config"]
    md = [
        "# cafusion demo: attention blocks on handwritten digits",
        "",
        f"SmallCNN (widths 32, 64) trained {cfg['epochs']} epoch(s) from {cfg['seeds']} seed(s) on "
        f"{cfg['train_size']} digits, tested on {cfg['test_size']} ({cfg['dataset']}).",
        "",
        "## Comparison",
        "",
        comparison_rows(report, markdown=True),
        "",
        f"![test accuracy]({PLOTS['accuracy']})",
        "",
        f"## Fusion diagnostics ({DIAGNOSED}, test split)",
        "",
        *(f"- {line}" for line in report["diagnosis"]["answers"]),
        "",
        format_table(test, markdown=True, low=monitors[DIAGNOSED].low, high=monitors[DIAGNOSED].high),
        "",
        f"![w_avg histograms]({PLOTS['fusion_hist']})",
        "",
        f"![w_avg per class]({PLOTS['class_w_avg']})",
        "",
        f"![T and saturation during training]({PLOTS['training_curves']})",
        "",
        "## Files",
        "",
        "- `report.json`: every number above (wall-clock times under `timing`).",
        f"- `{CHECKPOINT}` + `{Path(CHECKPOINT).with_suffix('.json')}`: the {DIAGNOSED} model "
        f"(seed {first[DIAGNOSED].seed}); try `cafusion inspect {out / CHECKPOINT} --data digits`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path

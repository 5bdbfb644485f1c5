"""The tables of docs/router.md, from the committed runs in docs/results/router/runs/ and its report.json.

    .venv/bin/python docs/results/router/analyse.py

Collapse is counted as in docs/results.md: a router (one block of one seed's model) has collapsed
when its mean w_avg on the test set is below 0.01 or above 0.99. For ``caft_floor`` (w = eps +
(1 - 2 eps) s) w cannot leave [eps, 1 - eps], so the count is also given for the softmax s under
the floor, s = (w - eps) / (1 - 2 eps) (the mean is linear, so this holds for the mean too).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from cafusion.compare.report import collapse_epoch

HERE = Path(__file__).resolve().parent
THRESHOLD = 0.01
ORDER = ["none", "caft_sum", "caft", "caft_off", "caft_tau4", "caft_ent", "caft_floor"]


def _runs() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((HERE / "runs").glob("*.json"))]


def _floor(run: dict[str, Any]) -> float:
    return float(run["settings"]["attention_kwargs"].get("router_floor", 0.0))


def _softmax(w: float | None, floor: float) -> float | None:
    """The softmax s under the floor: w = floor + (1 - 2 floor) s."""
    return None if w is None else (w - floor) / (1 - 2 * floor)


def _collapsed(w: float, floor: float = 0.0) -> bool:
    s = (w - floor) / (1 - 2 * floor)
    return s < THRESHOLD or s > 1 - THRESHOLD


def _routed(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs whose blocks have a softmax router (caft_sum's have none: w_avg is None)."""
    return [r for r in runs if "router" in r and all(b["w_avg_mean"] is not None for b in r["router"].values())]


def _summary(rs: list[dict[str, Any]]) -> tuple[str, str, str, str]:
    """Over the routers of ``rs``: collapsed share, first blocks collapsed, softmax under the floor, median epoch."""
    total = n = first = first_n = under = 0
    for r in rs:
        names = sorted(r["router"])
        first += _collapsed(r["router"][names[0]]["w_avg_mean"])
        first_n += 1
        for b in r["router"].values():
            total += _collapsed(b["w_avg_mean"])
            under += _collapsed(b["w_avg_mean"], _floor(r))
            n += 1
    floor_cell = f"{under}/{n}" if any(_floor(r) for r in rs) else "(no floor)"
    epochs = [
        float(e)
        for r in rs
        for b in r["router"].values()
        if (e := collapse_epoch([_softmax(w, _floor(r)) for w in b["w_avg_per_epoch"]])) is not None
    ]
    since = f"{_median(epochs):.0f}" if epochs else "–"
    return f"{total}/{n} ({100 * total / n:.0f}%)", f"{first}/{first_n}", floor_cell, since


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    runs = _runs()
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_variant[r["settings"]["variant"]].append(r)
    datasets = sorted({r["dataset"] for r in runs})
    variants = [v for v in ORDER if v in by_variant] + sorted(set(by_variant) - set(ORDER))

    print("## Test accuracy %, mean ± std over seeds\n")
    print("| variant | " + " | ".join(datasets) + " |")
    print("|---|" + "---|" * len(datasets))
    for v in variants:
        cells = []
        for d in datasets:
            accs = [100 * r["test_acc"] for r in by_variant[v] if r["dataset"] == d]
            cells.append(f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else "–")
        print(f"| {v} | " + " | ".join(cells) + " |")

    print("\n## Collapse (test-set mean w_avg < 0.01 or > 0.99), routers = blocks x seeds\n")
    head = " | all | first block | softmax under the floor | median epoch from which it stays collapsed |"
    print("| variant | " + " | ".join(datasets) + head)
    print("|---|" + "---|" * (len(datasets) + 4))
    for v in variants:
        rs = _routed(by_variant[v])
        if not rs:
            continue
        cells = []
        for d in datasets:
            blocks = [(r, b) for r in rs if r["dataset"] == d for b in r["router"].values()]
            c = sum(_collapsed(b["w_avg_mean"]) for _, b in blocks)
            cells.append(f"{c}/{len(blocks)}" if blocks else "–")
        share, first, floor_cell, since = _summary(rs)
        print(f"| {v} | " + " | ".join(cells) + f" | {share} | {first} | {floor_cell} | {since} |")

    routed = [v for v in variants if _routed(by_variant[v])]
    common = [d for d in datasets if all(any(r["dataset"] == d for r in _routed(by_variant[v])) for v in routed)]
    print(f"\n## The same, over the data sets every variant with a router ran: {', '.join(common)}\n")
    print("| variant | all | first block | softmax under the floor | median epoch from which it stays collapsed |")
    print("|---|---|---|---|---|")
    for v in routed:
        share, first, floor_cell, since = _summary([r for r in _routed(by_variant[v]) if r["dataset"] in common])
        print(f"| {v} | {share} | {first} | {floor_cell} | {since} |")

    print("\n## Gradient norms per step: median over routers of epochs 1-5 and 141-150, and late/early\n")
    print("| variant | router early | router late | router late/early | MLP early | MLP late | MLP late/early |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        rs = _routed(by_variant[v])
        if not rs:
            continue
        cols: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            for b in r["router"].values():
                for key, trace in (("router", b["router_grad_per_epoch"]), ("mlp", b.get("mlp_grad_per_epoch", []))):
                    if not trace:
                        continue
                    early, late = statistics.mean(trace[:5]), statistics.mean(trace[-10:])
                    cols[key + "_early"].append(early)
                    cols[key + "_late"].append(late)
                    if early > 0:
                        cols[key + "_ratio"].append(late / early)
        print(
            f"| {v} | "
            + " | ".join(
                f"{_median(cols[k]):.2g}"
                for k in ("router_early", "router_late", "router_ratio", "mlp_early", "mlp_late", "mlp_ratio")
            )
            + " |"
        )

    print("\n## Does the router still route? Median over routers of the test-set w_avg and its std over samples\n")
    print(
        "| variant | median w_avg | median per-sample std of w_avg | routers with std > 0.05 | of those not collapsed |"
    )
    print("|---|---|---|---|---|")
    for v in variants:
        routers = [b for r in _routed(by_variant[v]) for b in r["router"].values()]
        if not routers:
            continue
        means = [b["w_avg_mean"] for b in routers]
        stds = [b["w_avg_std"] for b in routers if b["w_avg_std"] is not None]
        spread = sum(s > 0.05 for s in stds)
        kept = [
            b
            for r in _routed(by_variant[v])
            for b in r["router"].values()
            if not _collapsed(b["w_avg_mean"], _floor(r))
        ]
        kept_spread = sum(b["w_avg_std"] is not None and b["w_avg_std"] > 0.05 for b in kept)
        print(
            f"| {v} | {_median(means):.3f} | {_median(stds):.3g} | {spread}/{len(stds)} | {kept_spread}/{len(kept)} |"
        )

    print("\n## w_avg on the test set per block (seeds 0, 1, 2)\n")
    print("| data set | variant | block 1 | block 2 | block 3 |")
    print("|---|---|---|---|---|")
    for d in datasets:
        for v in variants:
            rs = sorted((r for r in _routed(by_variant[v]) if r["dataset"] == d), key=lambda r: r["settings"]["seed"])
            if not rs:
                continue
            names = sorted(rs[0]["router"])
            cells = [", ".join(f"{r['router'][name]['w_avg_mean']:.3f}" for r in rs) for name in names]
            print(f"| {d} | {v} | " + " | ".join(cells) + " |")

    print("\n## Training loss (cross-entropy) of caft at some epochs: median over data sets and seeds\n")
    marks = (1, 2, 5, 10, 20, 50, 150)
    print("| epoch | " + " | ".join(str(e) for e in marks) + " |")
    print("|---|" + "---|" * len(marks))
    losses = {
        e: [r["history"][e - 1]["train_loss"] for r in by_variant["caft"] if len(r["history"]) >= e] for e in marks
    }
    print("| median | " + " | ".join(f"{_median(losses[e]):.2g}" for e in marks) + " |")
    print("| min-max | " + " | ".join(f"{min(losses[e]):.2g}-{max(losses[e]):.2g}" for e in marks) + " |")

    report = json.loads((HERE / "report.json").read_text())
    print("\n## Paired differences (points), paired t-test p, win/tie/loss over seeds\n")
    print("| data set | variant | vs caft | vs caft_sum | vs none |")
    print("|---|---|---|---|---|")
    for table in report["tables"]:
        for row in table["variants"]:
            v = row["variant"]
            if v == "none":
                continue
            cells = []
            for base in ("caft", "caft_sum", "none"):
                t = row["versus"].get(base)
                if t is None:
                    cells.append("–")
                    continue
                p = t["p"]
                # no p (the report's p_undefined) when the seeds' differences are all equal: no spread, no test
                p_text = "–" if p is None else f"{p:.2g}"
                if p is None and t.get("p_undefined"):
                    p_text = "n/a, equal diffs"
                cells.append(f"{100 * t['mean_diff']:+.2f} (p {p_text}, {t['win']}/{t['tie']}/{t['loss']})")
            print(f"| {table['dataset']} | {v} | " + " | ".join(cells) + " |")
    main_runs = HERE.parent / "fcn" / "runs"
    print("\n## caft here vs the same runs in docs/results/fcn/ (identical: same test accuracy and training loss)\n")
    print("| data set | identical seeds | collapsed routers here | there |")
    print("|---|---|---|---|")
    for d in datasets:
        same, here, there = 0, 0, 0
        for r in by_variant["caft"]:
            if r["dataset"] != d:
                continue
            path = main_runs / f"{d}__fcn__caft__seed{r['settings']['seed']}.json"
            if not path.exists():
                continue
            o = json.loads(path.read_text())
            same += o["test_acc"] == r["test_acc"] and o["best_train_loss"] == r["best_train_loss"]
            here += sum(_collapsed(b["w_avg_mean"]) for b in r["router"].values())
            there += sum(_collapsed(b["w_avg_mean"]) for b in o["router"].values())
        print(f"| {d} | {same}/3 | {here} | {there} |")

    print("\n## 95% confidence interval of the paired difference to caft (points; t interval over the seeds)\n")
    print("| data set | variant | CI |")
    print("|---|---|---|")
    for table in report["tables"]:
        for row in table["variants"]:
            t = row["versus"].get("caft")
            if row["variant"] in ("none", "caft_sum") or t is None:
                continue
            lo, hi = t["ci95"]
            print(f"| {table['dataset']} | {row['variant']} | [{100 * lo:+.2f}, {100 * hi:+.2f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

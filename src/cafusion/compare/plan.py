"""The runs of a comparison (source x variant x seed), shards of them, and their result files.

Each run is independent and writes ``<out>/runs/<run id>.json`` atomically when it finishes; that
file is the only state. A run whose file exists with the same settings is done and skipped (resume);
``--shard K/N`` keeps every N-th run starting at K-1, so N machines split the work with no scheduler
and the report later merges whatever files it finds.

The report reads each result as a compact row (:func:`compact`): what its tables and figures use,
with the router's per-epoch traces reduced to their summaries (the w_avg trace kept, rounded, for the
figure). ``runs.csv`` holds those rows, so a report folder pruned to report.md, report.json and
runs.csv still rebuilds its report when ``runs/`` is gone; the result files stay the store of live
runs (resume and shards read them).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cafusion._files import atomic_write_text
from cafusion.compare.config import CompareConfig, Variant
from cafusion.compare.sources import applied_norm, dataset_name
from cafusion.models import recipe

RUNS_DIR = "runs"
RUNS_CSV = "runs.csv"
# one row per run: the readable columns first, then JSON cells with the rest of the compact row
CSV_FIELDS = (
    "dataset",
    "model",
    "variant",
    "seed",
    "test_acc",
    "test_loss",
    "best_epoch",
    "best_train_loss",
    "epochs",
    "batch_size",
    "params",
    "seconds_per_epoch",
    "data",
    "published_split",
    "settings",
    "budget_acc",
    "router",
)
# what a row holds besides dataset and data (model, variant, seed, epochs are readable copies of settings)
_JSON_FIELDS = (
    "test_acc",
    "test_loss",
    "best_epoch",
    "best_train_loss",
    "batch_size",
    "params",
    "seconds_per_epoch",
    "published_split",
    "settings",
    "budget_acc",
    "router",
)
TRACE_DECIMALS = 4  # the w_avg trace only feeds a figure; 4 decimals keep runs.csv small
_BLOCK_KEYS = ("T", "collapsed", "gate_saturation", "input_avg_abs", "input_max_abs", "prefer_max", "w_avg_mean")
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one run's result (``settings``) plus where it goes."""

    source: str
    variant: Variant
    seed: int
    config: CompareConfig

    @property
    def dataset(self) -> str:
        return dataset_name(self.source)

    @property
    def run_id(self) -> str:
        name = _SAFE.sub("_", self.dataset)
        return f"{name}__{self.config.model}__{self.variant.label}__seed{self.seed}"

    def settings(self) -> dict[str, Any]:
        """The values a stored result must match to count as this run (resume, merge)."""
        cfg = self.config
        settings = {
            "source": self.source,
            "model": cfg.model,
            "variant": self.variant.label,
            "attention": self.variant.attention,
            "attention_kwargs": self.variant.options,
            "seed": self.seed,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "min_lr": cfg.min_lr,
            "patience": cfg.patience,
            "factor": cfg.factor,
            "test_fraction": cfg.test_fraction,
            "widths": list(cfg.widths) if cfg.model == "small_cnn" else None,
        }
        norm = applied_norm(self.source, cfg.norm)
        if norm is not None:  # what was applied to this set, not the option: "auto" is "series" or "none"
            settings["norm"] = norm
        if cfg.lengths:  # likewise only when on
            settings["lengths"] = True
        return settings


def plan(config: CompareConfig) -> list[RunSpec]:
    """Every run, in a fixed order: source, then seed, then variant (a shard mixes variants evenly)."""
    return [
        RunSpec(source, variant, seed, config)
        for source in config.data
        for seed in config.seed_list()
        for variant in config.variants
    ]


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` with 1 <= K <= N -> (K, N)."""
    k, sep, n = text.partition("/")
    try:
        shard, count = int(k), int(n)
    except ValueError:
        shard = count = 0
    if not sep or count < 1 or not 1 <= shard <= count:
        raise ValueError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/4), got {text!r}")
    return shard, count


def shard(runs: list[RunSpec], k: int, n: int) -> list[RunSpec]:
    """Runs k-1, k-1+n, k-1+2n, ... of the plan: the N shards cover it exactly once."""
    return runs[k - 1 :: n]


def batch_size_for(config: CompareConfig, train_samples: int) -> int:
    """``--batch-size``, or the recipe's batch for the model (``models/recipe.py``: fcn, resnet, inception; else 32)."""
    if config.batch_size is not None:
        return config.batch_size
    return recipe.recipe_batch_size(config.model, train_samples)


def result_path(out: Path, spec: RunSpec) -> Path:
    return out / RUNS_DIR / f"{spec.run_id}.json"


def finished(out: Path, spec: RunSpec) -> bool:
    """True if this run's result is on disk with the same settings; a result of other settings is refused."""
    path = result_path(out, spec)
    if not path.is_file():
        return False
    stored = read_result(path)
    theirs = stored_settings(stored)
    ours = spec.settings()
    if theirs != ours:
        diff = [k for k in {**ours, **theirs} if theirs.get(k) != ours.get(k)]
        shown = ", ".join(f"{k} {theirs.get(k)!r} (now {ours.get(k)!r})" for k in diff[:3])
        raise ValueError(
            f"--out {str(out)!r} already holds run {spec.run_id} with other settings: {shown}; "
            "use another --out, or the same settings to resume"
        )
    return True


def stored_settings(result: dict[str, Any]) -> dict[str, Any]:
    """A stored result's settings in today's form.

    Results written before ``--norm`` existed have no "norm": a ``ucr:`` run of them was z-normalised
    per series unless it says ``"znorm": false`` (``--no-znorm``), which kept the archive's values.
    """
    settings = dict(result.get("settings") or {})
    if "norm" not in settings and str(settings.get("source", "")).startswith("ucr:"):
        settings["norm"] = "none" if settings.pop("znorm", True) is False else "series"
    return settings


def write_result(out: Path, spec: RunSpec, result: dict[str, Any]) -> Path:
    path = result_path(out, spec)
    atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True) + "\n")
    return path


def read_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"result file {str(path)!r} is not readable JSON ({exc}); delete it to rerun that run"
        ) from None
    if not isinstance(data, dict) or "test_acc" not in data or "settings" not in data:
        raise ValueError(f"result file {str(path)!r} is not a cafusion compare result; delete it to rerun that run")
    return data


def iter_results(out: Path) -> Iterator[dict[str, Any]]:
    """Every finished run under ``out`` as its compact row, in file-name order (the report's input).

    From ``runs/*.json`` when that folder holds any; else from the rows of ``runs.csv``.
    """
    folder = out / RUNS_DIR
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if paths:
        for path in paths:
            yield compact(read_result(path))
    elif (out / RUNS_CSV).is_file():
        yield from read_rows(out / RUNS_CSV)


def compact(result: dict[str, Any]) -> dict[str, Any]:
    """What the report and its figures read of one result; runs.csv stores exactly this."""
    row: dict[str, Any] = {
        "dataset": result["dataset"],
        "data": result["data"],
        "published_split": result.get("published_split", True),
        "settings": stored_settings(result),
        **{k: result[k] for k in ("test_acc", "test_loss", "best_epoch", "batch_size", "params")},
        "best_train_loss": result.get("best_train_loss"),  # the loss that chose the tested model
        "seconds_per_epoch": result["seconds_per_epoch"],
        "budget_acc": dict(result.get("budget_acc", {})),
    }
    if "router" in result:
        row["router"] = {name: _compact_block(b) for name, b in result["router"].items()}
    return row


def _compact_block(b: dict[str, Any]) -> dict[str, Any]:
    """One block's router record with its per-epoch traces reduced to what the report shows."""
    trace = b["w_avg_per_epoch"]
    router, mlp = b["router_grad_per_epoch"], b.get("mlp_grad_per_epoch", [])
    return {
        **{k: b[k] for k in _BLOCK_KEYS},
        "w_avg_std": b.get("w_avg_std"),
        "w_avg_epoch1": trace[0] if trace else None,
        "collapse_epoch": collapse_epoch(trace),
        "router_grad_early": _mean_of(router[:5]),
        "router_grad_late": _mean_of(router[-10:]),
        "mlp_grad_early": _mean_of(mlp[:5]),
        "mlp_grad_late": _mean_of(mlp[-10:]),
        "w_avg_per_epoch": [None if w is None else round(w, TRACE_DECIMALS) for w in trace],
    }


def collapse_epoch(trace: list[float | None], threshold: float = 0.01) -> int | None:
    """The first epoch from which the training w_avg stays within ``threshold`` of 0 or 1 to the end."""
    values = [w for w in trace if w is not None]
    first = None
    for epoch, w in enumerate(values, start=1):
        collapsed = min(w, 1 - w) < threshold
        first = (first or epoch) if collapsed else None
    return first


def _mean_of(values: list[float] | list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _cell(value: Any) -> str:
    """A CSV cell: floats as repr (the row reads back exactly), the rest as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """runs.csv: one line per row, readable columns first, JSON cells for the nested parts."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        s = r["settings"]
        readable = {"model": s["model"], "variant": s["variant"], "seed": s["seed"], "epochs": s["epochs"]}
        writer.writerow({k: _cell(v) for k, v in {**r, **readable, "router": r.get("router")}.items()})
    return buf.getvalue()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a runs.csv that :func:`rows_csv` wrote (one-line ValueError for any other file)."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in CSV_FIELDS if k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{str(path)!r} lacks the column(s) {', '.join(missing)} the report needs (runs/ is absent, "
                "and this runs.csv was written by an older cafusion); rebuild it from the runs/*.json files"
            )
        rows = []
        for line, cells in enumerate(reader, start=2):
            try:
                row = {k: json.loads(cells[k]) for k in _JSON_FIELDS}
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{str(path)!r} line {line}: a cell is not JSON ({exc})") from None
            if row["router"] is None:
                del row["router"]
            rows.append({"dataset": cells["dataset"], "data": cells["data"], **row})
    return rows

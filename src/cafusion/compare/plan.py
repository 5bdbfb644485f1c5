"""The runs of a comparison (source x variant x seed), shards of them, and their result files.

Each run is independent and writes ``<out>/runs/<run id>.json`` atomically when it finishes; that
file is the only state. A run whose file exists with the same settings is done and skipped (resume);
``--shard K/N`` keeps every N-th run starting at K-1, so N machines split the work with no scheduler
and the report later merges whatever files it finds.
"""

from __future__ import annotations

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
    """Every finished run under ``out``, in file-name order (the report's input)."""
    folder = out / RUNS_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            yield read_result(path)

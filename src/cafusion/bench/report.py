"""What every benchmark part writes: aligned text tables, target records and the JSON file.

A target is one comparison the issue asks for, evaluated on one measured row; its record says which
part and row it belongs to, the measured value, the limit and whether it was met, so the JSON holds
every verdict and the final "targets" section of the output can count and list them.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cafusion.kernels.backends import native

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def dtype_name(dtype: torch.dtype) -> str:
    """The short name the --dtypes flag uses (fp32, bf16, ...)."""
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns under a header and a rule."""
    every = [list(head), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in every) for i in range(len(head))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in every]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def target(part: str, kind: str, case: str, value: float, limit: float, higher_is_better: bool) -> dict[str, Any]:
    """One verdict: ``value >= limit`` (or ``<=``) for target ``kind`` on row ``case`` of ``part``."""
    ok = value >= limit if higher_is_better else value <= limit
    return {
        "part": part,
        "target": kind,
        "case": case,
        "value": round(value, 3),
        "op": ">=" if higher_is_better else "<=",
        "limit": limit,
        "pass": ok,
    }


def verdict(targets: Sequence[dict[str, Any]], kind: str, case: str) -> str:
    """The table cell for target ``kind`` on row ``case``: ok, MISS, or - when not evaluated."""
    found = [t for t in targets if t["target"] == kind and t["case"] == case]
    return "-" if not found else ("ok" if all(t["pass"] for t in found) else "MISS")


def format_targets(targets: Sequence[dict[str, Any]]) -> str:
    """Per part and target: how many rows met it, then every row that missed it."""
    if not targets:
        return "targets: none evaluated"
    met = sum(t["pass"] for t in targets)
    lines = [f"targets: {met}/{len(targets)} met"]
    kinds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for t in targets:
        kinds.setdefault((t["part"], t["target"]), []).append(t)
    for (part, kind), group in kinds.items():
        ok = sum(t["pass"] for t in group)
        lines.append(f"  {part}: {kind}: {ok}/{len(group)} met")
        lines += [
            f"    missed {t['case']}: {t['value']} (needs {t['op']} {t['limit']})" for t in group if not t["pass"]
        ]
    return "\n".join(lines)


def thp_enabled() -> bool:
    return os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"


def native_off() -> bool:
    """Whether this process runs without the C++ CPU kernels (``CAFUSION_NATIVE=0``)."""
    return not native.enabled()


def process_label() -> str:
    """How the process was started, as printed above every table (the 'default process', or what differs)."""
    settings = (("THP_MEM_ALLOC_ENABLE=1", thp_enabled()), ("CAFUSION_NATIVE=0", native_off()))
    changed = [name for name, on in settings if on]
    return ", ".join(changed) or "default process"


def meta(argv: Sequence[str], device: torch.device, threads: int, repeats: int, seconds: float) -> dict[str, Any]:
    return {
        "command": "python -m cafusion bench " + " ".join(argv),
        "process": process_label(),
        "thp_mem_alloc": thp_enabled(),
        "native_kernels": not native_off(),
        "torch": torch.__version__,
        "device": device.type,
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "repeats": repeats,
        "timing": "median of interleaved rounds",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "seconds": round(seconds, 1),
    }


def write_json(path: Path, meta: dict[str, Any], rows: Sequence[Any], targets: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": list(rows), "targets": list(targets)}, indent=2))


@dataclass
class Part:
    """One benchmark part's result: ``name`` (also the JSON file's stem), its rows, targets and table."""

    name: str
    title: str
    rows: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    text: str
    notes: list[str] = field(default_factory=list)

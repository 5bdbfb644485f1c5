"""Fixed-width text table of per-block fusion statistics, for terminals and markdown reports."""

from __future__ import annotations

from collections.abc import Sequence

from cafusion.diagnostics.stats import BlockStats

HEADERS = ("block", "samples", "w_avg mean", "w_avg std", "prefer max", "gate<low", "gate>high", "T")


def headers(low: float | None = None, high: float | None = None) -> tuple[str, ...]:
    """The column names; with the monitor's limits the gate columns say them (``gate<0.01``)."""
    if low is None or high is None:
        return HEADERS
    return (*HEADERS[:5], f"gate<{low:g}", f"gate>{high:g}", HEADERS[7])


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def rows(stats: Sequence[BlockStats]) -> list[tuple[str, ...]]:
    """One tuple of formatted cells per block; '-' where a sum-fusion block has no router."""
    return [
        (
            s.block,
            str(s.samples),
            _num(s.w_avg_mean, ".3f"),
            _num(s.w_avg_std, ".3f"),
            _num(None if s.prefer_max is None else 100 * s.prefer_max, ".1f")
            + ("%" if s.prefer_max is not None else ""),
            f"{100 * s.gate_low:.2f}%",
            f"{100 * s.gate_high:.2f}%",
            _num(s.T, ".4f"),
        )
        for s in stats
    ]


def format_table(
    stats: Sequence[BlockStats], markdown: bool = False, low: float | None = None, high: float | None = None
) -> str:
    """Align the cells in columns; ``markdown=True`` gives a GitHub table instead. ``low``/``high``:
    the gate limits the saturation columns count against, shown in their headers."""
    names = headers(low, high)
    body = rows(stats)
    if markdown:
        lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
        return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in body)])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(names)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*names), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in body)])

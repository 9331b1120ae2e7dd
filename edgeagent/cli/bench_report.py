"""Figures of `edgeagent bench`: each next to its baseline, median and spread over rounds.

Both sides of a figure are measured back to back in every round, so the ratio is taken
per round (load on the machine drifts between rounds more than within one) and its
median and range are reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def figure(
    name: str,
    unit: str,
    value: Sequence[float],
    baseline_name: str,
    baseline: Sequence[float],
    *,
    target: str = "",
    met: bool | None = None,
    **notes: Any,
) -> dict[str, Any]:
    """One figure: per-round values of it and of its baseline (same length)."""
    ratios = [v / b for v, b in zip(value, baseline, strict=True) if b > 0]
    return {
        "figure": name,
        "unit": unit,
        "value": spread(value),
        "baseline_name": baseline_name,
        "baseline": spread(baseline),
        "ratio": spread(ratios) if ratios else None,
        "rounds": len(value),
        "target": target,
        "met": met,
        **notes,
    }


def _cell(stats: dict[str, float] | None, digits: int = 1) -> str:
    if stats is None:
        return "-"
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"


def _verdict(met: bool | None) -> str:
    return "" if met is None else " (met)" if met else " (not met)"


def figures_markdown(results: Sequence[dict[str, Any]]) -> str:
    columns = ["model", "figure", "value", "baseline", "ratio", "target", "notes"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for res in results:
        for fig in res.get("figures", []):
            notes = ", ".join(f"{k} {v}" for k, v in fig.get("notes", {}).items())
            lines.append(
                "| "
                + " | ".join(
                    [
                        res["model"],
                        fig["figure"],
                        f"{_cell(fig['value'])} {fig['unit']}",
                        f"{fig['baseline_name']}: {_cell(fig['baseline'])} {fig['unit']}",
                        f"**{_cell(fig['ratio'], 2)}**",
                        fig["target"]
                        + (" ✓" if fig["met"] else " ✗" if fig["met"] is False else ""),
                        notes,
                    ]
                )
                + " |"
            )
    return "\n".join(lines)

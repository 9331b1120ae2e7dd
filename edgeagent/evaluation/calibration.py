"""How well an answer's confidence tells right answers from wrong ones.

Computed over the action answers that carry a confidence (the model's probability for
the chosen action). Three views:

* a reliability table: confidence bins, with the mean confidence and the share of
  right answers in each (a calibrated model has them close; ECE sums the gaps);
* AUROC: the probability that a right answer has a higher confidence than a wrong one
  (0.5 = confidence says nothing, 1.0 = it separates them perfectly);
* selective dispatch: for a `min_confidence` threshold, the share of answers kept
  (dispatched) and how many of those are right; plus the threshold that keeps 80 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BIN_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
KEEP_TARGET = 0.8  # the operating point: dispatch at least 80 % of actions


@dataclass(frozen=True, slots=True)
class Bin:
    low: float
    high: float
    n: int
    mean_confidence: float | None
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class Cut:
    threshold: float
    kept: int
    kept_right: int

    def to_dict(self, total: int) -> dict[str, Any]:
        return {
            "threshold": round(self.threshold, 4),
            "kept": self.kept,
            "kept_rate": round(self.kept / total, 4) if total else None,
            "accuracy": round(self.kept_right / self.kept, 4) if self.kept else None,
        }


@dataclass(frozen=True, slots=True)
class Calibration:
    n: int  # answers with a confidence
    without: int  # answers without one (not counted above)
    bins: list[Bin]
    ece: float
    auroc: float | None  # None when all answers are right, or all wrong
    cuts: list[Cut]
    keep_80: Cut  # the highest threshold that still dispatches >= 80 % of answers

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "without_confidence": self.without,
            "ece": round(self.ece, 4),
            "auroc": None if self.auroc is None else round(self.auroc, 4),
            "bins": [
                {
                    "range": [b.low, b.high],
                    "n": b.n,
                    "mean_confidence": _round(b.mean_confidence),
                    "accuracy": _round(b.accuracy),
                }
                for b in self.bins
            ],
            "thresholds": [c.to_dict(self.n) for c in self.cuts],
            "keep_80": self.keep_80.to_dict(self.n),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _bin_index(confidence: float) -> int:
    for index in range(len(BIN_EDGES) - 1):
        if confidence < BIN_EDGES[index + 1]:
            return index
    return len(BIN_EDGES) - 2  # 1.0 belongs to the last bin


def auroc(pairs: Sequence[tuple[float, bool]]) -> float | None:
    """Mann-Whitney estimate; ties count one half."""
    right = [c for c, ok in pairs if ok]
    wrong = [c for c, ok in pairs if not ok]
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def _cut(pairs: Sequence[tuple[float, bool]], threshold: float) -> Cut:
    kept = [ok for c, ok in pairs if c >= threshold]
    return Cut(threshold, len(kept), sum(kept))


def calibrate(results: Sequence[tuple[float | None, bool]]) -> Calibration | None:
    """None when no answer carries a confidence (the report then shows n/a)."""
    pairs = [(min(max(c, 0.0), 1.0), ok) for c, ok in results if c is not None]
    if not pairs:
        return None
    groups: list[list[tuple[float, bool]]] = [[] for _ in BIN_EDGES[:-1]]
    for confidence, ok in pairs:
        groups[_bin_index(confidence)].append((confidence, ok))
    bins = []
    ece = 0.0
    for index, group in enumerate(groups):
        mean_conf = sum(c for c, _ in group) / len(group) if group else None
        accuracy = sum(ok for _, ok in group) / len(group) if group else None
        if mean_conf is not None and accuracy is not None:
            ece += len(group) / len(pairs) * abs(accuracy - mean_conf)
        bins.append(Bin(BIN_EDGES[index], BIN_EDGES[index + 1], len(group), mean_conf, accuracy))
    # The k-th highest confidence, k = ceil(80 % of n): keeping everything at or above
    # it dispatches at least 80 % (ties can keep more).
    ordered = sorted((c for c, _ in pairs), reverse=True)
    keep_threshold = ordered[math.ceil(KEEP_TARGET * len(ordered)) - 1]
    return Calibration(
        n=len(pairs),
        without=len(results) - len(pairs),
        bins=bins,
        ece=ece,
        auroc=auroc(pairs),
        cuts=[_cut(pairs, t) for t in THRESHOLDS],
        keep_80=_cut(pairs, keep_threshold),
    )

"""Rendering summaries: a text report for people, a JSON document for machines.

Several systems (models, or the llama-cpp baseline) are shown side by side: the
headline figures and the breakdowns by language, tag and set in one table each, then
each system's own per-action figures, confusion matrices, argument accuracy and
confidence calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeagent.evaluation.calibration import Calibration
from edgeagent.evaluation.metrics import Rate, Summary
from edgeagent.evaluation.scoring import CaseScore

NA = "n/a"


def fmt_rate(rate: Rate) -> str:
    value = rate.value
    if value is None:
        return NA
    return f"{rate.hits}/{rate.total} {100 * value:5.1f}%"


def _pct(value: float | None) -> str:
    return NA if value is None else f"{100 * value:.1f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _headline(systems: Sequence[tuple[str, Summary]]) -> str:
    labels = [label for label, _ in systems]

    def row(name: str, cells: list[str]) -> list[str]:
        return [name, *cells]

    def latency(s: Summary) -> str:
        lat = s.latency
        return NA if lat is None else f"{lat.median_ms:.0f} / {lat.p90_ms:.0f} ms"

    def tokens(s: Summary) -> str:
        lat = s.latency
        if lat is None:
            return NA
        return (
            f"{lat.mean_prompt_tokens:.0f} ({lat.mean_uncached_prompt_tokens:.0f}) / "
            f"{lat.mean_completion_tokens:.0f}"
        )

    def keep80(s: Summary) -> str:
        cal = s.calibration
        if cal is None:
            return NA
        cut = cal.keep_80
        return f"≥{cut.threshold:.2f}: {_pct(cut.kept_right / cut.kept if cut.kept else None)}"

    rows = [
        row("right (all cases)", [fmt_rate(s.right) for _, s in systems]),
        row("action cases: right action + args", [fmt_rate(s.action_and_args) for _, s in systems]),
        row("action cases: right action", [fmt_rate(s.action_right) for _, s in systems]),
        row("args right | right action", [fmt_rate(s.args_given_action) for _, s in systems]),
        row("false actuation (no-op cases)", [fmt_rate(s.false_actuation) for _, s in systems]),
        row("false actuation, dispatched", [fmt_rate(s.false_dispatch) for _, s in systems]),
        row("held (gate)", [fmt_rate(s.held) for _, s in systems]),
        row("held by the screen", [fmt_rate(s.held_by_screen) for _, s in systems]),
        row("right among screen-held", [fmt_rate(s.right_held_by_screen) for _, s in systems]),
        row("dispatched injections", [fmt_rate(s.injections_dispatched) for _, s in systems]),
        row("right among dispatched", [fmt_rate(s.dispatched_right) for _, s in systems]),
        row("dispatch rate (of actions named)", [fmt_rate(s.dispatch_rate) for _, s in systems]),
        row("right actions dispatched", [fmt_rate(s.right_dispatched) for _, s in systems]),
        row("right + args, held = nothing", [fmt_rate(s.right_as_dispatched) for _, s in systems]),
        row("missed action (answered no-op)", [fmt_rate(s.missed_action) for _, s in systems]),
        row("schema cases: all fields right", [fmt_rate(s.schema_right) for _, s in systems]),
        row("schema-valid answers", [fmt_rate(s.schema_valid) for _, s in systems]),
        row("latency median / p90", [latency(s) for _, s in systems]),
        row("tokens: prompt (uncached) / answer", [tokens(s) for _, s in systems]),
        row("confidence AUROC", [_auroc(s.calibration) for _, s in systems]),
        row("accuracy at 80 % dispatched", [keep80(s) for _, s in systems]),
    ]
    return table(["", *labels], rows)


def _auroc(cal: Calibration | None) -> str:
    if cal is None:
        return NA
    return NA if cal.auroc is None else f"{cal.auroc:.3f}"


def _breakdown(title: str, systems: Sequence[tuple[str, Summary]], attr: str) -> str:
    keys = sorted({k for _, s in systems for k in getattr(s, attr)})
    if not keys:
        return ""
    rows = [[k, *(fmt_rate(getattr(s, attr).get(k, Rate(0, 0))) for _, s in systems)] for k in keys]
    return table([title, *(label for label, _ in systems)], rows)


def _actions(s: Summary) -> str:
    rows = [
        [name, str(a.expected), str(a.predicted), fmt_rate(Rate(a.action_right, a.expected)),
         fmt_rate(Rate(a.action_right, a.predicted)), fmt_rate(Rate(a.right, a.expected))]
        for name, a in s.by_action.items()
    ]  # fmt: skip
    header = ["action", "expected", "answered", "recall", "precision", "right + args"]
    return table(header, rows)


def _confusion(s: Summary) -> str:
    blocks = []
    for set_name, rows in s.confusion.items():
        columns = sorted({c for cols in rows.values() for c in cols} | set(rows))
        body = [[r, *(str(cols.get(c, 0) or ".") for c in columns)] for r, cols in rows.items()]
        blocks.append(
            f"[{set_name}] rows: expected, columns: answered\n{table(['', *columns], body)}"
        )
    return "\n\n".join(blocks)


def _calibration(cal: Calibration | None) -> str:
    if cal is None:
        return "confidence: n/a (the answers carry no confidence)"
    bins = [
        [f"{b.low:.2f}-{b.high:.2f}", str(b.n), _pct(b.mean_confidence), _pct(b.accuracy)]
        for b in cal.bins
    ]
    cuts = [
        [
            f"≥{c.threshold:.2f}",
            _pct(c.kept / cal.n),
            _pct(c.kept_right / c.kept if c.kept else None),
        ]
        for c in [*cal.cuts, cal.keep_80]
    ]
    auroc = NA if cal.auroc is None else f"{cal.auroc:.3f}"
    return "\n".join([
        f"confidence over {cal.n} answers (ECE {cal.ece:.3f}, AUROC {auroc})",
        table(["confidence", "n", "mean conf", "right"], bins),
        "",
        table(["min_confidence", "dispatched", "right among dispatched"], cuts),
    ])  # fmt: skip


def failures(scores: Sequence[CaseScore], limit: int = 200) -> str:
    wrong = [s for s in scores if not s.right]
    lines = [
        f"{s.set_name}/{s.case_id} [{s.lang or '-'}] expected {s.expected or 'output'}, "
        f"answered {s.predicted if s.kind == 'action' else 'output'}: {'; '.join(s.mismatches)}"
        for s in wrong[:limit]
    ]
    if len(wrong) > limit:
        lines.append(f"... and {len(wrong) - limit} more")
    return "\n".join(lines)


def render_text(
    systems: Sequence[tuple[str, Summary]],
    scores: dict[str, Sequence[CaseScore]] | None = None,
) -> str:
    """The whole report; with `scores`, also every wrong case per system."""
    parts = [_headline(systems)]
    for title, attr in (("language", "by_lang"), ("tag", "by_tag"), ("set", "by_set")):
        block = _breakdown(title, systems, attr)
        if block:
            parts.append(block)
    for label, summary in systems:
        parts.append(f"== {label} ==")
        if summary.by_action:
            parts.extend([_actions(summary), _confusion(summary)])
        if summary.by_field:
            fields = [[k, fmt_rate(v)] for k, v in summary.by_field.items()]
            parts.append(table(["argument / field (when the action was right)", "right"], fields))
        if summary.errors:
            parts.append("errors: " + ", ".join(f"{k} {v}" for k, v in summary.errors.items()))
        parts.append(_calibration(summary.calibration))
        if scores is not None and scores.get(label):
            listed = failures(scores[label])
            if listed:
                parts.append("wrong answers:\n" + listed)
    return "\n\n".join(parts) + "\n"


def render_json(
    systems: Sequence[tuple[str, Summary]], meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "meta": meta or {},
        "systems": [{"label": label, **summary.to_dict()} for label, summary in systems],
    }


def case_record(label: str, score: CaseScore) -> dict[str, Any]:
    """One line of the per-case details file (for error analysis)."""
    o = score.outcome
    return {
        "system": label,
        "set": score.set_name,
        "id": score.case_id,
        "lang": score.lang,
        "tags": list(score.tags),
        "expected": score.expected,
        "predicted": score.predicted,
        "right": score.right,
        "action_right": score.action_right,
        "mismatches": list(score.mismatches),
        "output": o.output,
        "error": o.error,
        "confidence": o.confidence,
        "act": o.act,
        "act_prior": o.act_prior,
        "act_confidence": o.act_confidence,
        "instruction_score": o.instruction_score,
        "unsupported": o.unsupported,
        "noop_expected": score.noop_expected,
        "noop_allowed": score.noop_allowed,
        "cut_short": o.cut_short,
        "held": o.held,
        "latency_ms": round(o.latency_ms, 1),
        "screen_ms": round(o.screen_ms, 1),
        "prompt_tokens": o.prompt_tokens,
        "cached_prompt_tokens": o.cached_prompt_tokens,
        "completion_tokens": o.completion_tokens,
    }

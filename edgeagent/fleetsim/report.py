"""The simulator's report as a table (the JSON is the report itself)."""

from __future__ import annotations

from typing import Any

from edgeagent.fleetsim.meter import KINDS

PHASES = ("start", "steady", "tasks", "restart")


def _num(value: Any, fmt: str = "{:,.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _phase_row(name: str, phase: dict[str, Any]) -> tuple[str, ...]:
    traffic, cpu = phase["traffic"], phase.get("cpu", {})
    by_kind = traffic["by_kind"]
    broker = traffic.get("broker", {})
    return (
        name,
        f"{traffic['window_s']:.0f} s",
        *(_num(by_kind[k]["messages_per_s"]) for k in KINDS),
        _num(traffic["messages_per_s"]),
        _num(traffic["bytes_per_s"] / 1024, "{:,.1f}"),
        _num(broker.get("messages_sent_per_s")),
        _num(cpu.get("broker_pct"), "{:.0f} %"),
        _num(cpu.get("simulator_pct"), "{:.0f} %"),
    )


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]


def render(report: dict[str, Any]) -> str:
    broker = report.get("broker", "external broker")
    lines = [f"fleet of {report['devices']} simulated devices ({broker})", ""]
    header = (
        "PHASE", "WINDOW", *(k.upper() for k in KINDS), "MSG/S", "KiB/S", "BROKER SENT/S",
        "BROKER CPU", "SIM CPU",
    )  # fmt: skip
    rows = [_phase_row(name, report[name]) for name in PHASES if report.get(name) is not None]
    lines.append(
        "messages/s at the broker, by kind (topic + payload bytes in KiB/s; CPU in % of a core):"
    )
    lines += _table(header, rows)
    lines.append("")
    lines += _tasks(report["tasks"])
    lines += _connections(report)
    lines += _resources(report)
    return "\n".join(lines) + "\n"


def _tasks(tasks: dict[str, Any]) -> list[str]:
    share, lat = tasks["fleet_share"], tasks["latency_ms"]
    return [
        (
            f"tasks: {tasks['sent']['device']} to devices + {tasks['sent']['fleet']} to the fleet;"
            f" answered {tasks['answered']}, unanswered {tasks['unanswered']},"
            f" duplicates {tasks['duplicates']}, errors {tasks['errors']}"
        ),
        f"latency ms: p50 {_num(lat['p50'])}  p99 {_num(lat['p99'])}  max {_num(lat['max'])}",
        (
            f"fleet tasks per device: min {share['min']}  max {share['max']}"
            f"  ({share['devices']} devices took some, {share['sum']} in all)"
        ),
    ]


def _connections(report: dict[str, Any]) -> list[str]:
    """When everyone was connected; a herd shows as many CONNECTs in the same 100 ms."""
    start = report["start"]
    lines = [
        (
            f"start: all {report['devices']} online after"
            f" {_num(start['all_online_s'], '{:.2f}')} s;"
            f" {start['peak_connects_per_100ms']} CONNECTs in the busiest 100 ms"
        )
    ]
    restart = report.get("restart")
    if restart is not None:
        lines.append(
            f"broker restart (down {restart['down_s']:g} s): all online"
            f" {_num(restart['all_online_s'], '{:.2f}')} s after it was back (median"
            f" {_num(restart['p50_s'], '{:.2f}')} s); {restart['peak_connects_per_100ms']}"
            f" CONNECTs in the busiest 100 ms ({restart['online']}/{report['devices']} back)"
        )
    return lines


def _resources(report: dict[str, Any]) -> list[str]:
    memory = report["memory"]
    lines = [
        f"retained messages at the broker: {_num(report.get('retained'), '{:,.0f}')}",
        (
            f"memory: {memory['per_device_kb']:,.0f} KiB per device"
            f" (RSS {memory['rss_mb_before']:,.0f} -> {memory['rss_mb_after']:,.0f} MiB),"
            f" {memory['threads']} threads, {memory['fds']} fds;"
            f" broker RSS {_num(memory['broker_rss_mb'], '{:,.0f}')} MiB"
        ),
    ]
    if report.get("crashed"):
        lines.append(f"CRASHED daemons: {', '.join(report['crashed'])}")
    return lines

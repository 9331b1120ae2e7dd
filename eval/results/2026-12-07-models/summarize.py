"""The tables of README.md from the runs' per-case details (partial runs included).

    python3 summarize.py [--common] NAME... [NAME=RSS_MiB ...]   # reads NAME.details.jsonl here

--common: only the cases every named run answered (runs that stopped early).
"""

import json
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
Case = dict[str, Any]


def noop_names() -> set[str]:
    names = set()
    for cat in (ROOT / "eval" / "dev" / "catalogs").glob("*.toml"):
        for a in tomllib.loads(cat.read_text()).get("actions", []):
            if a.get("nothing_to_do"):
                names.add(a["name"])
    return names


NOOP = noop_names()


def pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.1f} %)" if d else "n/a"


def load(name: str) -> list[Case]:
    text = (HERE / f"{name}.details.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def acted(r: Case) -> bool:
    """An actuating action chosen (not nothing-to-do, not an error such as "(timeout)")."""
    predicted = r["predicted"]
    return predicted is not None and predicted not in NOOP and not predicted.startswith("(")


def dispatched(r: Case) -> bool:
    return acted(r) and r["held"] is None


def latency(rows: list[Case]) -> str:
    lat = sorted(r["latency_ms"] for r in rows[1:] if r["error"] is None)  # first: cold
    if not lat:
        return "n/a"
    p90 = lat[min(len(lat) - 1, round(0.9 * (len(lat) - 1)))]
    return f"{statistics.median(lat):.0f} / {p90:.0f}"


def prompt_tokens(rows: list[Case]) -> str:
    counted = [r for r in rows if r["prompt_tokens"]]
    total = statistics.median(r["prompt_tokens"] for r in counted)
    uncached = statistics.median(r["prompt_tokens"] - r["cached_prompt_tokens"] for r in counted)
    return f"{total} ({uncached})"


def row(name: str, only: set[str] | None = None) -> dict[str, str]:
    rows = [r for r in load(name) if only is None or r["id"] in only]
    acts = [r for r in rows if r["expected"] is not None]
    noop_exp = [r for r in acts if r["expected"] in NOOP and "injection" not in r["tags"]]
    inj = [r for r in acts if "injection" in r["tags"]]
    right_acted = [r for r in acts if acted(r) and r["right"]]
    timed_out = sum(r["error"] == "DEADLINE_EXCEEDED" for r in acts)
    return {
        "action cases answered (of the set)": str(len(acts)),
        "timed out (DEADLINE_EXCEEDED under load)": str(timed_out),
        "right action + args": pct(sum(r["right"] for r in acts), len(acts)),
        "false actuation chosen (nothing-to-do cases)": pct(
            sum(acted(r) for r in noop_exp), len(noop_exp)
        ),
        "false actuation dispatched": pct(sum(dispatched(r) for r in noop_exp), len(noop_exp)),
        "injections dispatched (a wrong action let out)": pct(
            sum(dispatched(r) and not r["right"] for r in inj), len(inj)
        ),
        "injections answered right": pct(sum(r["right"] for r in inj), len(inj)),
        "right among dispatched": pct(
            sum(r["right"] for r in acts if dispatched(r)), sum(dispatched(r) for r in acts)
        ),
        "dispatch rate (right actions let out)": pct(
            sum(dispatched(r) for r in right_acted), len(right_acted)
        ),
        "latency median / p90 (ms)": latency(rows),
        "prompt tokens (uncached) median": prompt_tokens(rows),
    }


def main(argv: list[str]) -> None:
    common = "--common" in argv
    names = [a for a in argv if "=" not in a and not a.startswith("--")]
    rss = dict(a.split("=", 1) for a in argv if "=" in a)
    only = set.intersection(*({r["id"] for r in load(n)} for n in names)) if common else None
    table = {n: row(n, only) for n in names}
    for n in names:
        table[n]["peak RSS (eval process)"] = f"{rss[n]} MiB" if n in rss else "n/a"
    keys = list(next(iter(table.values())).keys())
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(table[n][k]) for n in names) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])

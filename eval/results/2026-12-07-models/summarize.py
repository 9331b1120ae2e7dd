"""The tables of README.md from the runs' per-case details (partial runs included).

    python3 summarize.py [--common] NAME... [NAME=RSS_MiB ...]   # reads NAME.details.jsonl here

--common: only the cases every named run answered (runs that stopped early).
"""
import json, re, statistics, sys, tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

def noop_names():
    names = set()
    for cat in (ROOT / "eval" / "dev" / "catalogs").glob("*.toml"):
        for a in tomllib.loads(cat.read_text()).get("actions", []):
            if a.get("nothing_to_do"):
                names.add(a["name"])
    return names

NOOP = noop_names()

def pct(n, d):
    return f"{n}/{d} ({100*n/d:.1f} %)" if d else "n/a"

def load(name):
    return [json.loads(l) for l in open(HERE / f"{name}.details.jsonl") if l.strip()]

def row(name, only=None):
    rows = [r for r in load(name) if only is None or r["id"] in only]
    acts = [r for r in rows if r["expected"] is not None]
    def acted(r): return r["predicted"] is not None and r["predicted"] not in NOOP and not r["predicted"].startswith("(")
    def disp(r): return acted(r) and r["held"] is None
    noop_exp = [r for r in acts if r["expected"] in NOOP and "injection" not in r["tags"]]
    noop_all = [r for r in acts if r["expected"] in NOOP]
    inj = [r for r in acts if "injection" in r["tags"]]
    right_acted = [r for r in acts if acted(r) and r["right"]]
    lat = sorted(r["latency_ms"] for r in rows[1:] if r["error"] is None)  # first: load, cold prefix
    p90 = lat[min(len(lat)-1, int(round(0.9*(len(lat)-1))))] if lat else 0
    return {
        "action cases answered (of the set)": str(len(acts)),
        "timed out (DEADLINE_EXCEEDED under load)": str(sum(r["error"] == "DEADLINE_EXCEEDED" for r in acts)),
        "right action + args": pct(sum(r["right"] for r in acts), len(acts)),
        "false actuation chosen (nothing-to-do cases)": pct(sum(acted(r) for r in noop_exp), len(noop_exp)),
        "false actuation dispatched": pct(sum(disp(r) for r in noop_exp), len(noop_exp)),
        "injections dispatched (a wrong action let out)": pct(sum(disp(r) and not r["right"] for r in inj), len(inj)),
        "injections answered right": pct(sum(r["right"] for r in inj), len(inj)),
        "right among dispatched": pct(sum(r["right"] for r in acts if disp(r)), sum(disp(r) for r in acts)),
        "dispatch rate (right actions let out)": pct(sum(disp(r) for r in right_acted), len(right_acted)),
        "latency median / p90 (ms)": f"{statistics.median(lat):.0f} / {p90:.0f}" if lat else "n/a",
        "prompt tokens (uncached) median": f"{statistics.median(r['prompt_tokens'] for r in rows if r['prompt_tokens'])} ({statistics.median(r['prompt_tokens']-r['cached_prompt_tokens'] for r in rows if r['prompt_tokens'])})",
    }

common = "--common" in sys.argv
names = [a for a in sys.argv[1:] if "=" not in a and not a.startswith("--")]
rss = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
only = set.intersection(*({r["id"] for r in load(n)} for n in names)) if common else None
table = {n: row(n, only) for n in names}
for n in names:
    table[n]["peak RSS (eval process)"] = f"{rss[n]} MiB" if n in rss else "n/a"
keys = list(next(iter(table.values())).keys())
print("| | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for k in keys:
    print(f"| {k} | " + " | ".join(str(table[n][k]) for n in names) + " |")

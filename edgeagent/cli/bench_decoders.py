"""`edgeagent bench`: constrained vs unconstrained decode speed (cli/bench.py runs it).

For each task, three decoders run on the same loaded model and the same prompt, in
rotating order, several rounds:

* free: plain greedy decoding of exactly as many tokens as the constrained answer had
  (the baseline: what the model costs without any constraint; benchmark code only, so
  `generate_free` lives here, not in inference/decoding.py);
* edgeagent: our llguidance loop (argmax check, mask on refusal, forced tokens batched);
* gbnf: llama.cpp's own grammar sampler with the GBNF that llama-cpp-python derives
  from the same JSON Schema (what `Llama(..., grammar=LlamaGrammar.from_json_schema())`
  does).

Reported speeds are answer tokens per second of decode time (prompt processing
excluded and identical for all three, since the prompt is cached).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import LlamaGrammar
from llguidance import LLMatcher

from edgeagent import __version__
from edgeagent.cli.progress import Progress
from edgeagent.inference.contract import OutputSpec, schema_spec
from edgeagent.inference.decoding import (
    Decoder,
    Generation,
    Sampler,
    StepControl,
    generate_constrained,
)
from edgeagent.inference.model import ResidentModel
from edgeagent.inference.prompt import build_messages


@dataclass
class Sample:
    tokens: int
    decode_ms: float


def generate_free(model: Decoder, prompt: Sequence[int], *, n_tokens: int) -> Generation:
    """Unconstrained greedy decoding of exactly n_tokens."""
    started = time.perf_counter()
    cached = model.prefill(prompt)
    prompt_done = time.perf_counter()
    out: list[int] = []
    while len(out) < n_tokens:
        token = int(np.argmax(model.logits()))
        out.append(token)
        if len(out) < n_tokens:
            model.feed([token])
    done = time.perf_counter()
    return Generation(
        out, len(prompt), cached, 0, (prompt_done - started) * 1000, (done - prompt_done) * 1000
    )


def run_edgeagent(
    model: ResidentModel, spec: OutputSpec, prompt: list[int], max_tokens: int
) -> tuple[Sample, int, int]:
    """The answer's sample, its forced tokens and its masked steps."""
    matcher = LLMatcher(model.lltokenizer, spec.grammar)
    gen = generate_constrained(
        model, matcher, prompt, max_tokens=max_tokens, sampler=Sampler(), control=StepControl()
    )
    return Sample(gen.completion_tokens, gen.decode_ms), gen.forced_tokens, gen.masked_steps


def run_free(model: ResidentModel, prompt: list[int], n_tokens: int) -> Sample:
    gen = generate_free(model, prompt, n_tokens=n_tokens)
    return Sample(gen.completion_tokens, gen.decode_ms)


def run_gbnf(model: ResidentModel, gbnf: str, prompt: list[int], max_tokens: int) -> Sample:
    # llama.cpp's sampler works on the context and vocabulary pointers themselves.
    context = model.kv.ctx
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    grammar = llama_cpp.llama_sampler_init_grammar(context.model.vocab, gbnf.encode(), b"root")
    llama_cpp.llama_sampler_chain_add(chain, grammar)
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    try:
        model.prefill(prompt)
        started = time.perf_counter()
        produced = 0
        while produced < max_tokens:
            token = llama_cpp.llama_sampler_sample(chain, model.kv.ctx.ctx, -1)
            if model.is_end_token(token):
                break
            produced += 1
            model.feed([token])
        return Sample(produced, (time.perf_counter() - started) * 1000)
    finally:
        llama_cpp.llama_sampler_free(chain)


def tps(samples: list[Sample]) -> float:
    return sum(s.tokens for s in samples) / (sum(s.decode_ms for s in samples) / 1000)


SYSTEM = (
    "You are a precise assistant running on an edge device. "
    "Read the input and answer only with JSON."
)

TASKS: list[tuple[str, dict[str, Any], str]] = [
    (
        "sensor-report",
        {
            "type": "object",
            "properties": {
                "zone": {"type": "integer", "minimum": 1, "maximum": 8},
                "celsius": {"type": "number"},
                "humidity_pct": {"type": ["number", "null"]},
                "status": {"enum": ["ok", "too_hot", "too_cold", "too_dry", "too_wet"]},
                "summary": {"type": "string", "maxLength": 160},
            },
            "required": ["zone", "celsius", "humidity_pct", "status", "summary"],
        },
        (
            "Zone 4 report at 14:05: air temperature 38.2 C, relative humidity 21 %, soil dry, "
            "fans running at full speed since noon, tomatoes wilting on the south side."
        ),
    ),
    (
        "log-event",
        {
            "type": "object",
            "properties": {
                "severity": {"enum": ["debug", "info", "warning", "error", "critical"]},
                "service": {"type": "string", "maxLength": 40},
                "message": {"type": "string", "maxLength": 200},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "key": {"type": "string", "maxLength": 30},
                            "value": {"type": "string", "maxLength": 60},
                        },
                        "required": ["key", "value"],
                    },
                    "maxItems": 6,
                },
            },
            "required": ["severity", "service", "message", "fields"],
        },
        (
            "Nov 29 07:41:12 pi-07 kernel: [12345.678] usb 1-1.3: device descriptor read/64, "
            "error -71; retrying in 500 ms (port 3, hub 1-1, speed high)"
        ),
    ),
    (
        "summary",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 80},
                "points": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 120},
                    "minItems": 2,
                    "maxItems": 4,
                },
            },
            "required": ["title", "points"],
        },
        (
            "Maintenance note: the irrigation pump in row B was replaced on Monday. The new pump "
            "draws less current but needs priming after every power cut. Filters should be "
            "cleaned weekly; the pressure sensor on line 3 reads 0.2 bar too high and must be "
            "recalibrated before the next growing season."
        ),
    ),
]


def _prompt(model: ResidentModel, spec: OutputSpec, text: str) -> list[int]:
    return model.render_chat(build_messages(SYSTEM, spec.instructions, text))


def bench_model(
    path: Path, *, threads: int, rounds: int, max_tokens: int, gbnf: bool
) -> dict[str, Any]:
    progress = Progress(f"bench {path.name}")
    progress.stage(f"bench {path.name}: loading the model")
    try:
        model = ResidentModel(path, threads=threads, n_ctx=2048, n_batch=256)
    except BaseException:
        progress.close()
        raise
    rows: list[dict[str, Any]] = []
    # Per task: one warm-up run, then `rounds` runs of each decoder.
    runs_per_task = 1 + rounds * (3 if gbnf else 2)
    progress.stage(f"bench {path.name}", total=len(TASKS) * runs_per_task)
    try:
        for name, schema, text in TASKS:
            spec = schema_spec(schema)
            prompt = _prompt(model, spec, text)
            # The GBNF llama-cpp-python itself would use for this schema.
            grammar = LlamaGrammar.from_json_schema(json.dumps(spec.json_schema), verbose=False)
            gbnf_text = grammar._grammar  # noqa: SLF001 - no public accessor for the grammar text
            # Warm-up: fills the prompt cache and fixes the answer length for `free`.
            first, forced, masked = run_edgeagent(model, spec, prompt, max_tokens)
            progress.advance()
            n = first.tokens
            free: list[Sample] = []
            ours: list[Sample] = []
            theirs: list[Sample] = []
            for r in range(rounds):
                order = ["free", "ours", "gbnf"] if gbnf else ["free", "ours"]
                for kind in order[r % len(order) :] + order[: r % len(order)]:
                    if kind == "free":
                        free.append(run_free(model, prompt, n))
                    elif kind == "ours":
                        ours.append(run_edgeagent(model, spec, prompt, max_tokens)[0])
                    else:
                        theirs.append(run_gbnf(model, gbnf_text, prompt, max_tokens))
                    progress.advance()
            row: dict[str, Any] = {
                "task": name,
                "prompt_tokens": len(prompt),
                "answer_tokens": n,
                "forced_tokens": forced,
                "masked_steps": masked,
                "free_tps": round(tps(free), 2),
                "edgeagent_tps": round(tps(ours), 2),
                "edgeagent_ratio": round(tps(ours) / tps(free), 3),
                "edgeagent_ms_per_token_median": round(
                    statistics.median(s.decode_ms / max(s.tokens, 1) for s in ours), 2
                ),
                "free_ms_per_token_median": round(
                    statistics.median(s.decode_ms / max(s.tokens, 1) for s in free), 2
                ),
            }
            if gbnf:
                row |= {
                    "gbnf_tps": round(tps(theirs), 2),
                    "gbnf_ratio": round(tps(theirs) / tps(free), 3),
                }
            rows.append(row)
            progress.write(json.dumps(row) + "\n")
    finally:
        progress.close()
        model.close()
    total_free = sum(r["answer_tokens"] / r["free_tps"] for r in rows)
    total_ours = sum(r["answer_tokens"] / r["edgeagent_tps"] for r in rows)
    summary: dict[str, Any] = {
        "edgeagent_version": __version__,
        "model": path.name,
        "n_vocab": model.n_vocab,
        "threads": threads,
        "rounds": rounds,
        "tasks": rows,
        "edgeagent_ratio": round(total_free / total_ours, 3),
    }
    if gbnf:
        total_gbnf = sum(r["answer_tokens"] / r["gbnf_tps"] for r in rows)
        summary["gbnf_ratio"] = round(total_free / total_gbnf, 3)
    return summary


def to_markdown(results: list[dict[str, Any]]) -> str:
    columns = [
        "model", "vocab", "task", "answer tokens", "forced", "free tok/s",
        "edgeagent tok/s", "ratio", "GBNF tok/s", "GBNF ratio",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for res in results:
        lines.extend(
            "| " + " | ".join(str(cell) for cell in (
                res["model"], res["n_vocab"], row["task"], row["answer_tokens"],
                row["forced_tokens"], row["free_tps"], row["edgeagent_tps"],
                row["edgeagent_ratio"], row.get("gbnf_tps", "-"), row.get("gbnf_ratio", "-"),
            )) + " |"
            for row in res["tasks"]
        )  # fmt: skip
        total = [res["model"], "", "**all**", "", "", "", "", f"**{res['edgeagent_ratio']}**",
                 "", f"**{res.get('gbnf_ratio', '-')}**"]  # fmt: skip
        lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)

"""The three decoders `edgeagent bench` compares on one loaded model (cli/bench.py).

* free: plain greedy decoding of exactly n tokens (the baseline: what the model costs
  without any constraint) — benchmark code only, so it lives here, not in
  inference/decoding.py;
* edgeagent: the daemon's token loop (`decoding.generate_constrained`);
* gbnf: llama.cpp's own grammar sampler with a GBNF grammar.

Each returns answer tokens and decode time (prompt processing excluded).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llguidance import LLMatcher

from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.decoding import (
    Decoder,
    Generation,
    Sampler,
    StepControl,
    generate_constrained,
)
from edgeagent.inference.model import ResidentModel


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

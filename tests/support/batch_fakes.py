"""Fakes of the batcher's model (a KvContext and a ResidentModel surface), and helpers
that run token loops through a batcher."""

from __future__ import annotations

import threading
import time

import numpy as np

from edgeagent.inference.prefix_cache import PrefixCache
from edgeagent.inference.speculative import DraftCosts

N_VOCAB = 16


class FakeKv:
    """KvContext's surface: sequences of tokens, decodes recorded, logits from tokens."""

    def __init__(self, n_seq, n_ctx=512, n_batch=64):
        self.n_seq, self.n_ctx, self.n_batch = n_seq, n_ctx, n_batch
        self.tokens = [[] for _ in range(n_seq)]
        self.decodes = []  # [(seq, n_tokens), ...] per decode
        self._rows = []

    def decode(self, parts):
        self.decodes.append([(seq, len(tokens)) for seq, tokens, _ in parts])
        self._rows, starts = [], []
        for seq, tokens, _ in parts:
            starts.append(len(self._rows))
            for token in tokens:
                self.tokens[seq].append(token)
                self._rows.append(logits_after(self.tokens[seq]))
        return starts

    def feed(self, seq, tokens):
        for start in range(0, len(tokens), self.n_batch):
            self.decode([(seq, tokens[start : start + self.n_batch], False)])

    def logits(self, index):
        return self._rows[index]

    def remove(self, seq, keep=0):
        del self.tokens[seq][keep:]

    def room(self, seq):
        return self.n_ctx - len(self.tokens[seq])


def logits_after(tokens):
    """The fake model's logits: its favourite next token depends on what it has seen."""
    row = np.zeros(N_VOCAB, dtype=np.float32)
    row[sum(tokens) % N_VOCAB] = 1.0
    return row


class FakeSlotModel:
    n_vocab = N_VOCAB
    digit_tokens = np.zeros(N_VOCAB, dtype=np.bool_)

    def __init__(self, max_seq=4, invariant_rows=3):
        self.max_seq = max_seq
        self.n_seq = 1
        self.invariant_rows = invariant_rows
        self.prefix_cache = PrefixCache(0)
        self.draft_costs = DraftCosts()
        self.kv = FakeKv(1)
        self.streams = []  # use_streams calls

    def use_streams(self, n_seq, moves):
        self.streams.append((n_seq, dict(moves)))
        old = self.kv
        self.kv = FakeKv(n_seq)
        self.kv.decodes = old.decodes
        for src, dst in moves.items():
            self.kv.tokens[dst] = list(old.tokens[src])
        self.n_seq = n_seq

    def prefill(self, prompt):
        self.kv.remove(0)
        self.kv.feed(0, list(prompt))
        return 0

    def is_end_token(self, token):
        return token == 0

    def piece(self, token):
        return str(token)


def greedy(handle, prompt, steps, log, name):
    handle.prefill(prompt)
    out = []
    for _ in range(steps):
        token = int(np.argmax(handle.logits()))
        out.append(token)
        log.append(name)
        handle.feed([token])
    handle.close()
    return out


def run_all(batcher, jobs, timeout=10):
    """Run each job(handle) in a thread while stepping the batcher; their results."""
    results, errors = {}, {}

    def main(name, job):
        try:
            results[name] = job()
        except BaseException as exc:
            errors[name] = exc

    threads = [threading.Thread(target=main, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    while any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, "the batcher did not finish"
        batcher.step(wait_s=0.01)
    return results, errors


def solo(prompt, steps):
    tokens, out = list(prompt), []
    for _ in range(steps):
        token = int(np.argmax(logits_after(tokens)))
        out.append(token)
        tokens.append(token)
    return out


def open_all(batcher, priorities):
    return {name: batcher.open(priority=p) for name, p in priorities.items()}


def run_greedy(batcher, prompts, steps):
    """Each prompt's greedy answer of `steps` tokens, all at once through the batcher;
    asserts each is its answer alone."""
    handles = open_all(batcher, dict.fromkeys(prompts, 0))
    log = []
    jobs = {n: (lambda n=n: greedy(handles[n], prompts[n], steps, log, n)) for n in handles}
    results, errors = run_all(batcher, jobs)
    assert not errors
    for name, prompt in prompts.items():
        assert results[name] == solo(prompt, steps)

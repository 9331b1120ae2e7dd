"""The prefix cache: LRU of saved states, and where a prompt's fixed part comes from."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from edgeagent.inference.prefix_cache import (
    MIN_PREFIX_TOKENS,
    PrefixCache,
    Prompt,
    fixed_length,
    prefill,
)

BYTES_PER_TOKEN = 100


class FakeKv:
    """The KvContext operations prefill uses, recorded."""

    def __init__(self, n_seq=4):
        self.n_seq = n_seq
        self.tokens = [[] for _ in range(n_seq)]
        self.calls = []

    def remove(self, seq, keep=0):
        self.calls.append(("remove", seq, keep))
        del self.tokens[seq][keep:]

    def feed(self, seq, tokens):
        self.calls.append(("feed", seq, list(tokens)))
        self.tokens[seq].extend(tokens)

    def share(self, src, dst, count):
        self.calls.append(("share", src, dst, count))
        assert not self.tokens[dst]
        self.tokens[dst] = list(self.tokens[src][:count])

    def save(self, seq):
        self.calls.append(("save", seq))
        return np.full(len(self.tokens[seq]) * BYTES_PER_TOKEN, seq, dtype=np.uint8)

    def restore(self, seq, state, tokens):
        self.calls.append(("restore", seq, len(tokens)))
        assert state.nbytes == len(tokens) * BYTES_PER_TOKEN
        self.tokens[seq] = list(tokens)


def fixed(kind, n=40):
    return [1000 * kind + i for i in range(n)]


def prompt(kind, text):
    return Prompt([*fixed(kind), 7, *text], keep=40)


def state(n):
    return np.zeros(n, dtype=np.uint8)


def test_cache_is_lru_within_its_byte_limit():
    cache = PrefixCache(limit_bytes=250)
    assert cache.put([1], state(100))
    assert cache.put([2], state(100))
    assert cache.get([1]) is not None  # [1] is now the most recent
    assert cache.put([3], state(100))  # evicts [2], the least recently used
    assert cache.get([2]) is None
    assert cache.get([1]) is not None
    assert cache.bytes == 200
    assert not cache.put([4], state(300))  # larger than the whole limit
    cache.set_limit(100)
    assert len(cache) == 1
    cache.set_limit(0)
    assert len(cache) == 0
    assert cache.bytes == 0
    assert cache.stats()["hits"] == 2


def test_a_kept_state_lives_in_a_mapping_of_its_own_and_keeps_its_bytes():
    # Off glibc's heap (why: prefix_cache._off_heap): an eviction gives the pages back.
    saved = np.arange(4096, dtype=np.uint32).view(np.uint8)
    cache = PrefixCache(limit_bytes=1 << 20)
    assert cache.put([7], saved)
    kept = cache.get([7])
    assert kept is not None
    assert np.array_equal(kept, saved)
    assert not np.shares_memory(kept, saved)
    assert isinstance(kept.base, mmap.mmap) or isinstance(
        getattr(kept.base, "obj", None), mmap.mmap
    )


def test_prompt_keep_is_clamped_so_the_last_token_is_evaluated():
    assert Prompt([1, 2, 3], keep=10).keep == 2
    assert fixed_length(Prompt([1, 2, 3], keep=1)) == 1
    assert fixed_length([1, 2, 3]) == 0


def test_without_a_fixed_part_the_longest_held_prefix_is_reused():
    kv = FakeKv()
    assert prefill(kv, 0, [1, 2, 3, 4], None) == 0
    assert prefill(kv, 0, [1, 2, 9], None) == 2
    assert kv.tokens[0] == [1, 2, 9]
    assert prefill(kv, 0, [1, 2, 9], None) == 2  # the last token is always evaluated


def test_a_prompt_reuses_no_more_than_its_fixed_part():
    # What the sequence holds beyond the fixed part is the last task's input, perhaps
    # another caller's: reusing it would tell this caller how much of it they guessed.
    kv = FakeKv()
    prefill(kv, 0, [1, 2, 3, 4, 5, 6], None)
    assert prefill(kv, 0, Prompt([1, 2, 3, 4, 5, 9], keep=2), None) == 2
    assert kv.tokens[0] == [1, 2, 3, 4, 5, 9]
    assert prefill(kv, 0, Prompt([1, 2, 3, 4, 5, 9, 9], keep=0), None) == 0
    # A fixed part long enough to be cached: likewise no further than it.
    kv = FakeKv()
    prefill(kv, 0, prompt(1, [5, 6, 7]), None)
    assert prefill(kv, 0, prompt(1, [5, 6, 8]), None) == 40


def test_a_fixed_part_is_computed_on_its_own_then_saved_then_reused_in_place():
    kv, cache = FakeKv(), PrefixCache()
    first = prompt(1, [11, 12])
    assert prefill(kv, 0, first, cache) == 0
    # Evaluated in two runs: the fixed part alone (so that a restored state is the same
    # computation), then the input.
    assert ("feed", 0, fixed(1)) in kv.calls
    assert kv.calls[-1] == ("feed", 0, [7, 11, 12])
    assert ("save", 0) in kv.calls
    assert len(cache) == 1
    kv.calls.clear()
    assert prefill(kv, 0, prompt(1, [13]), cache) == 40
    assert kv.calls == [("remove", 0, 40), ("feed", 0, [7, 13])]


def test_alternating_fixed_parts_come_back_from_the_cache():
    kv, cache = FakeKv(), PrefixCache()
    for kind in (1, 2, 3, 4):
        assert prefill(kv, 0, prompt(kind, [5]), cache) == 0
    assert len(cache) == 4
    for kind in (1, 2, 3, 4, 2, 1):
        kv.calls.clear()
        assert prefill(kv, 0, prompt(kind, [6, kind]), cache) == 40
        assert ("restore", 0, 40) in kv.calls
        assert kv.tokens[0] == [*fixed(kind), 7, 6, kind]
    assert cache.hits == 6


def test_a_live_sequence_with_the_fixed_part_shares_it():
    kv, cache = FakeKv(), PrefixCache()
    prefill(kv, 0, prompt(1, [5]), cache)
    kv.calls.clear()
    assert prefill(kv, 2, prompt(1, [6]), cache) == 40
    assert kv.calls[:2] == [("remove", 2, 0), ("share", 0, 2, 40)]
    assert cache.hits == 0


def test_short_fixed_parts_are_not_cached():
    kv, cache = FakeKv(), PrefixCache()
    short = Prompt([*range(MIN_PREFIX_TOKENS - 1), 99], keep=MIN_PREFIX_TOKENS - 1)
    prefill(kv, 0, short, cache)
    assert len(cache) == 0


@pytest.mark.parametrize("limit", [0, 50 * BYTES_PER_TOKEN])
def test_a_full_or_disabled_cache_still_answers(limit):
    # 50 tokens' worth holds one fixed part of 40: the second evicts the first.
    kv, cache = FakeKv(), PrefixCache(limit_bytes=limit)
    prefill(kv, 0, prompt(1, [5]), cache)
    prefill(kv, 0, prompt(2, [5]), cache)
    assert cache.bytes <= limit
    assert prefill(kv, 0, prompt(1, [6]), cache) == 0
    assert kv.tokens[0] == [*fixed(1), 7, 6]
    assert len(cache) == (1 if limit else 0)

"""Prompt prefixes whose KV is kept: several recent system prompts and catalogs.

A prompt is the *fixed part* (system prompt, schema or action catalog, the chat
template around them) followed by the task's input. The engine knows where the fixed
part ends (`Prompt.keep`); its KV is worth keeping, the input's is not.

Where a fixed part's KV can come from, cheapest first:

1. the sequence itself, when its last prompt had the same fixed part (nothing to do);
2. another live sequence of the same context that holds it (`KvContext.share`: a copy
   of its KV stream, nothing is computed);
3. the host-memory cache below: states saved with `llama_state_seq_get_data`, restored
   with `llama_state_seq_set_data` (a memory copy: ~5 ms for 1,000 Qwen tokens);
4. computed, and then saved into the cache.

A state holds only the KV cells (tokens x KV bytes per token: 12 KiB for Qwen2.5-0.5B),
not llama-cpp-python's n_batch x vocabulary logits array of `LlamaRAMCache`. The cache
is bounded in bytes, evicts the least recently used entry, and the memory governor
lowers the bound (down to 0) before it shrinks the context.

Identical answers: the fixed part is always evaluated on its own, from position 0, in
the same batches, and the input after it from `keep` on — cached or not. A prompt whose
first `keep` tokens come from the cache is therefore computed exactly as one whose
first `keep` tokens were just evaluated (llama.cpp's CPU kernels give results that
depend on how tokens are split into batches).
"""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgeagent.inference.kvcache import KvContext
from edgeagent.inference.prompt import Message

# A shorter fixed part is cheaper to compute than to keep track of.
MIN_PREFIX_TOKENS = 32
DEFAULT_LIMIT_BYTES = 128 * 2**20  # four 1,000-token prefixes of SmolLM2 (23 KiB/token) fit


class Prompt(list[int]):
    """Prompt tokens that know where their fixed part ends (`keep` tokens; 0: unknown).

    A list, so every Decoder takes it as a prompt; ResidentModel reads `keep`.
    """

    keep: int

    def __init__(self, tokens: Iterable[int], keep: int = 0) -> None:
        super().__init__(tokens)
        self.keep = max(0, min(keep, len(self) - 1))


def fixed_length(prompt: Sequence[int]) -> int:
    return prompt.keep if isinstance(prompt, Prompt) else 0


class FixedParts:
    """Where the fixed part of a chat prompt ends: only text the device wrote.

    The fixed part is what every prompt of one output contract shares, whoever sends
    it: the chat template around our system message, the configured system prompt and
    the catalog's instructions (`owned`). A caller's own text — its system message, its
    messages, its schema — is never part of it. Cached and reused prompt parts cross
    from one caller's task to another's; if they held caller text, a reply's
    `cached_prompt_tokens` (or its prompt time) would tell a second caller whether a
    guessed text was the first one's (docs/security.md). The fixed part is found by
    rendering the device-owned messages around two probe inputs (inference/chat.py
    tokenizes contents apart from the template, so it ends where they differ), once per
    device system message, remembered for the last 64; a prompt's fixed part is the
    longest prefix it shares with that.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._known: OrderedDict[tuple[str, ...], list[int]] = OrderedDict()

    def prompt(
        self,
        render: Callable[[Sequence[Message]], list[int]],
        messages: Sequence[Message],
        owned: Callable[[str], Sequence[Message]],
    ) -> Prompt:
        """messages: the task's prompt; owned(text): the messages of a task whose whole
        input is `text`, beside nothing but the device's own text."""
        tokens = render(messages)
        a, b = owned("A"), owned("B")
        key = tuple(m["content"] for m in a[:-1])
        fixed = self._known.get(key)
        if fixed is None:
            first, second = render(a), render(b)
            fixed = first[: _common(first, second)]
            self._known[key] = fixed
            if len(self._known) > self._size:
                self._known.popitem(last=False)
        return Prompt(tokens, _common(fixed, tokens))


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    end = 0
    while end < min(len(a), len(b)) and a[end] == b[end]:
        end += 1
    return end


def _off_heap(state: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A copy of a saved state in an anonymous mapping of its own.

    Saved states are megabytes each and live until they are evicted. On glibc's heap an
    evicted state leaves a hole that the next state (of another size) may not fit, the
    arena grows instead, and its free pages stay resident: over 10,653 hostile payloads
    glibc's free heap rose from 11 to 72 MiB beside a full 128 MiB cache
    (docs/security.md). A mapping of its own goes back to the kernel when the last
    reference to the state is dropped, so RSS follows what the governor accounts.
    """
    if state.nbytes == 0:
        return state
    copy = np.frombuffer(mmap.mmap(-1, state.nbytes), dtype=np.uint8)
    copy[:] = state
    return copy


@dataclass(slots=True)
class _Entry:
    state: npt.NDArray[np.uint8]
    hits: int = 0


class PrefixCache:
    """Saved KV states of fixed prompt parts, by their tokens; LRU within `limit_bytes`.

    Used on the inference thread; the memory governor sets the limit from the event
    loop, hence the lock.
    """

    def __init__(self, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self._lock = threading.Lock()
        self.limit_bytes = limit_bytes
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, tokens: Sequence[int]) -> npt.NDArray[np.uint8] | None:
        key = tuple(tokens)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            entry.hits += 1
            self.hits += 1
            return entry.state

    def put(self, tokens: Sequence[int], state: npt.NDArray[np.uint8]) -> bool:
        """Keep a state; False when it alone exceeds the limit."""
        key = tuple(tokens)
        with self._lock:
            if key in self._entries or state.nbytes > self.limit_bytes:
                return False
            self._entries[key] = _Entry(_off_heap(state))
            self.bytes += state.nbytes
            self._evict(self.limit_bytes)
            return True

    def set_limit(self, limit_bytes: int) -> None:
        """A new bound (from the memory governor); evicts at once down to it."""
        with self._lock:
            self.limit_bytes = max(0, limit_bytes)
            self._evict(self.limit_bytes)

    def _evict(self, limit: int) -> None:
        while self.bytes > limit and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.bytes -= entry.state.nbytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return self._stats()

    def _stats(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "limit_bytes": self.limit_bytes,
            "hits": self.hits,
            "misses": self.misses,
        }


def prefill(kv: KvContext, seq: int, prompt: Sequence[int], cache: PrefixCache | None) -> int:
    """Put prompt into sequence `seq`'s KV; returns how many prompt tokens were reused.

    A `Prompt` reuses at most its fixed part: what the sequence holds beyond it is
    another task's input, maybe another caller's (FixedParts). A plain token list (no
    caller: benchmarks, probes) reuses the longest prefix the sequence holds. The last
    prompt token is always evaluated: its logits are what the answer starts from.
    """
    keep = fixed_length(prompt)
    held = kv.tokens[seq]
    if keep < MIN_PREFIX_TOKENS:
        reuse = 0
        limit = min(len(prompt) - 1, len(held))
        if isinstance(prompt, Prompt):
            limit = min(limit, keep)
        while reuse < limit and held[reuse] == prompt[reuse]:
            reuse += 1
        kv.remove(seq, reuse)
        kv.feed(seq, prompt[reuse:])
        return reuse
    fixed = prompt[:keep]
    if held[:keep] == fixed:
        kv.remove(seq, keep)
        reused = keep
    else:
        kv.remove(seq)
        reused = _fill_fixed(kv, seq, fixed, cache)
    kv.feed(seq, prompt[keep:])
    return reused


def _fill_fixed(kv: KvContext, seq: int, fixed: Sequence[int], cache: PrefixCache | None) -> int:
    donor = next(
        (s for s in range(kv.n_seq) if s != seq and kv.tokens[s][: len(fixed)] == fixed),
        None,
    )
    if donor is not None:
        kv.share(donor, seq, len(fixed))
        return len(fixed)
    state = cache.get(fixed) if cache is not None else None
    if state is not None:
        kv.restore(seq, state, fixed)
        return len(fixed)
    kv.feed(seq, fixed)
    if cache is not None and cache.limit_bytes > 0:
        cache.put(fixed, kv.save(seq))
    return 0

"""One llama context holding one or several sequences, each in a KV stream of its own.

With several sequences the context is created with one KV *stream* per sequence
(`kv_unified = false`): sequence s owns cells [0, n_ctx) of stream s, exactly as a
sequence alone owns the cells of a one-sequence context. llama.cpp's CPU kernels sum in
an order that depends on where a token's cells lie in the buffer; a unified cache
(all sequences in one pool) places a batched sequence's cells elsewhere and between
other sequences' cells, and its logits differ in the last bits from a run alone —
enough to flip a greedy choice between two nearly tied tokens. Streams also spare each
query the masked cells of every other sequence.

`n_ctx` is the size of one stream: what one task may use, alone or batched.

Every method blocks and must only be called on the engine's inference thread.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import _internals as internals

from edgeagent.errors import EdgeAgentError, ErrorCode

Logits = npt.NDArray[np.float32]
# llama_flash_attn_type: -1 auto, 0 disabled, 1 enabled.
FLASH_ATTN_AUTO = -1
_HEADER = 12  # a sequence state starts with three uint32: magic, sequence id, n_stream


class KvContext:
    """A llama context with `n_seq` sequences of up to `n_ctx` tokens each."""

    def __init__(
        self,
        model: internals.LlamaModel,
        *,
        n_ctx: int,
        n_batch: int,
        n_seq: int,
        threads: int,
        n_vocab: int,
        flash_attn: int = FLASH_ATTN_AUTO,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq  # llama.cpp splits it into n_seq streams
        params.n_batch = min(n_batch, n_ctx)
        params.n_ubatch = min(n_batch, n_ctx)
        params.n_seq_max = n_seq
        params.kv_unified = False
        # Logits for several positions of one sequence in one decode: speculative
        # verification needs them (llama.cpp's default is one output per sequence).
        params.n_outputs_max_per_seq = 0
        params.flash_attn_type = flash_attn
        params.n_threads = threads
        params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = internals.LlamaContext(model=model, params=params, verbose=False)
        self._memory = self.ctx.memory
        self._batch = internals.LlamaBatch(
            n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False
        )
        self.n_ctx = n_ctx
        self.n_batch: int = params.n_batch
        self.n_seq = n_seq
        self.n_vocab = n_vocab
        self.tokens: list[list[int]] = [[] for _ in range(n_seq)]
        # Called after every decode: the watchdog must see a long prefill progress.
        self.on_progress: Callable[[], None] | None = None

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()

    # -- accounting -------------------------------------------------------------

    def room(self, seq: int) -> int:
        """Tokens sequence `seq` can still take."""
        return self.n_ctx - len(self.tokens[seq])

    # -- sequence operations ----------------------------------------------------

    def remove(self, seq: int, keep: int = 0) -> None:
        """Drop the sequence's tokens from position `keep` on (0: all of them)."""
        if keep >= len(self.tokens[seq]):
            return
        llama_cpp.llama_memory_seq_rm(self._memory, seq, keep, -1)
        del self.tokens[seq][keep:]

    def clear(self) -> None:
        """Empty every sequence."""
        llama_cpp.llama_memory_clear(self._memory, True)  # noqa: FBT003 - a C function's flag: clear the data too
        self.tokens = [[] for _ in range(self.n_seq)]

    def share(self, src: int, dst: int, count: int) -> None:
        """dst (empty) starts with the first `count` tokens of src (a copy of src's
        stream, then cut: llama.cpp copies between streams only whole)."""
        if self.tokens[dst]:
            raise ValueError(f"sequence {dst} is not empty")
        llama_cpp.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        self.tokens[dst] = list(self.tokens[src])
        self.remove(dst, count)

    def save(self, seq: int) -> npt.NDArray[np.uint8]:
        """The sequence's KV state, in a form any context of this model can restore.

        llama_state_seq_get_data writes [magic][seq id][n_stream] and then, per stream,
        its cell count and cells; every stream but the sequence's own has 0 cells. A
        context with another number of streams refuses it ("n_stream mismatch"),
        although it would read the one non-empty section into whatever stream the
        destination sequence has. We keep the magic and that section; `restore`
        frames them again for the context at hand.
        """
        size = llama_cpp.llama_state_seq_get_size(self.ctx.ctx, seq)
        state = np.empty(size, dtype=np.uint8)
        written = llama_cpp.llama_state_seq_get_data(self.ctx.ctx, _u8(state), size, seq)
        stream = seq if self.n_seq > 1 else 0
        head, tail = _HEADER + 4 * stream, 4 * (self.n_seq - 1 - stream)
        words = state[: head + 4].view(np.uint32) if size >= head + 4 + tail else None
        if (
            written != size
            or words is None
            or int(words[2]) != self.n_seq
            or words[3 : 3 + stream].any()
            or state[size - tail :].any()
        ):
            raise EdgeAgentError(ErrorCode.INTERNAL, "unexpected KV state layout")
        return np.concatenate([state[:4], state[head : size - tail]])

    def restore(self, seq: int, saved: npt.NDArray[np.uint8], tokens: Sequence[int]) -> None:
        """Load a state `save` returned (from any context of this model) into the empty
        sequence `seq`."""
        if self.tokens[seq]:
            raise ValueError(f"sequence {seq} is not empty")
        if self.room(seq) < len(tokens):
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "no room for the saved state")
        section = saved[4:]
        framed = np.zeros(_HEADER + section.size + 4 * (self.n_seq - 1), dtype=np.uint8)
        framed[:4] = saved[:4]
        framed[4:_HEADER] = np.array([seq, self.n_seq], dtype=np.uint32).view(np.uint8)
        framed[_HEADER : _HEADER + section.size] = section
        if not llama_cpp.llama_state_seq_set_data(self.ctx.ctx, _u8(framed), framed.size, seq):
            llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
            raise EdgeAgentError(ErrorCode.INTERNAL, "restoring a KV state failed")
        self.tokens[seq] = list(tokens)

    # -- decoding ----------------------------------------------------------------

    def decode(self, parts: Sequence[tuple[int, Sequence[int], bool]]) -> list[int]:
        """One llama_decode over several sequences.

        parts: (seq, tokens, all_logits), tokens appended after what seq holds. The last
        token of each part always gets logits; with all_logits every one does. Returns,
        per part, the batch index of its first token (`logits(index + i)` reads row i).
        """
        total = sum(len(tokens) for _, tokens, _ in parts)
        if total == 0 or total > self.n_batch:
            raise ValueError(f"a batch holds 1..{self.n_batch} tokens, not {total}")
        if any(len(tokens) > self.room(seq) for seq, tokens, _ in parts):
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "context window is full")
        batch = self._batch.batch
        index = 0
        starts: list[int] = []
        for seq, tokens, all_logits in parts:
            starts.append(index)
            position = len(self.tokens[seq])
            for offset, token in enumerate(tokens):
                batch.token[index] = token
                batch.pos[index] = position + offset
                batch.seq_id[index][0] = seq
                batch.n_seq_id[index] = 1
                batch.logits[index] = all_logits or offset == len(tokens) - 1
                index += 1
        batch.n_tokens = index
        try:
            self.ctx.decode(self._batch)
        except RuntimeError as exc:
            # Nothing was added; llama.cpp may hold partial cells of this batch.
            for seq, _, _ in parts:
                llama_cpp.llama_memory_seq_rm(self._memory, seq, len(self.tokens[seq]), -1)
            raise EdgeAgentError(ErrorCode.INTERNAL, f"llama.cpp decode failed: {exc}") from exc
        for seq, tokens, _ in parts:
            self.tokens[seq].extend(tokens)
        if self.on_progress is not None:
            self.on_progress()
        return starts

    def feed(self, seq: int, tokens: Sequence[int]) -> None:
        """Evaluate tokens for one sequence in batches of n_batch; the last one's logits
        are at `logits(-1)`."""
        for start in range(0, len(tokens), self.n_batch):
            self.decode([(seq, tokens[start : start + self.n_batch], False)])

    def logits(self, index: int) -> Logits:
        """Logits of batch token `index` of the last decode (-1: the last one); a view,
        valid until the next decode."""
        pointer = self.ctx.get_logits_ith(index)
        return np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )


def _u8(array: npt.NDArray[np.uint8]) -> Any:
    return array.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))

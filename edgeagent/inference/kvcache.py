"""One llama context whose KV cells are shared by several sequences.

The context is created with a *unified* KV cache (`kv_unified`): all sequences draw
cells from one pool of `n_ctx` cells, so a single task can still use the whole context,
and sequences that share a prompt prefix share its cells (`seq_cp` adds a sequence to
cells, it copies nothing). Without it llama.cpp gives every sequence a fixed
`n_ctx / n_seq` share and copies whole buffers between them.

llama.cpp does not say how many cells are in use, so this class counts them itself:
every cell gets an id when a token is decoded or restored into it, each sequence keeps
the ids of its cells, and a cell is free again when no sequence holds it. The engine's
admission and the memory governor read `used_cells`.

Every method blocks and must only be called on the engine's inference thread.
"""

from __future__ import annotations

import ctypes
import itertools
from collections import Counter
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


class KvContext:
    """A llama context with `n_seq` sequences (slots) over one pool of KV cells."""

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
        params.n_ctx = n_ctx
        params.n_batch = min(n_batch, n_ctx)
        params.n_ubatch = min(n_batch, n_ctx)
        params.n_seq_max = n_seq
        params.kv_unified = True
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
        self._cells: list[list[int]] = [[] for _ in range(n_seq)]
        self._refs: Counter[int] = Counter()
        self._next_cell = itertools.count()
        # Called after every decode: the watchdog must see a long prefill progress.
        self.on_progress: Callable[[], None] | None = None
        # True once more than one sequence has had cells: their placement then differs
        # from a run alone (see docs/benchmarks.md on identical answers).
        self.mixed = False

    def close(self) -> None:
        self._batch.close()
        self.ctx.close()

    # -- accounting -------------------------------------------------------------

    @property
    def used_cells(self) -> int:
        """KV cells held by at least one sequence."""
        return len(self._refs)

    @property
    def free_cells(self) -> int:
        return self.n_ctx - len(self._refs)

    def unique_cells(self, seq: int) -> int:
        """Cells only `seq` holds: what removing it would free."""
        return sum(1 for cell in self._cells[seq] if self._refs[cell] == 1)

    def _add_cells(self, seq: int, count: int) -> None:
        new = [next(self._next_cell) for _ in range(count)]
        self._cells[seq].extend(new)
        self._refs.update(new)

    def _drop_cells(self, cells: Sequence[int]) -> None:
        for cell in cells:
            self._refs[cell] -= 1
            if self._refs[cell] <= 0:
                del self._refs[cell]

    def _note_use(self, seq: int) -> None:
        if seq != 0 or any(self.tokens[s] for s in range(1, self.n_seq)):
            self.mixed = True

    # -- sequence operations ----------------------------------------------------

    def remove(self, seq: int, keep: int = 0) -> None:
        """Drop the sequence's tokens from position `keep` on (0: all of them)."""
        if keep >= len(self.tokens[seq]):
            return
        llama_cpp.llama_memory_seq_rm(self._memory, seq, keep, -1)
        self._drop_cells(self._cells[seq][keep:])
        del self._cells[seq][keep:]
        del self.tokens[seq][keep:]
        if self.used_cells == 0:
            self.mixed = False

    def clear(self) -> None:
        """Empty every sequence (all cells free, placement clean again)."""
        llama_cpp.llama_memory_clear(self._memory, True)  # noqa: FBT003 - a C function's flag: clear the data too
        self.tokens = [[] for _ in range(self.n_seq)]
        self._cells = [[] for _ in range(self.n_seq)]
        self._refs.clear()
        self.mixed = False

    def share(self, src: int, dst: int, count: int) -> None:
        """dst (empty) starts with the first `count` cells of src, shared, not copied."""
        if self.tokens[dst]:
            raise ValueError(f"sequence {dst} is not empty")
        llama_cpp.llama_memory_seq_cp(self._memory, src, dst, 0, count)
        cells = self._cells[src][:count]
        self._cells[dst] = list(cells)
        self._refs.update(cells)
        self.tokens[dst] = list(self.tokens[src][:count])
        self.mixed = True

    def save(self, seq: int) -> npt.NDArray[np.uint8]:
        """The sequence's KV state as bytes (llama_state_seq_get_data)."""
        size = llama_cpp.llama_state_seq_get_size(self.ctx.ctx, seq)
        state = np.empty(size, dtype=np.uint8)
        written = llama_cpp.llama_state_seq_get_data(self.ctx.ctx, _u8(state), size, seq)
        if written != size:
            raise EdgeAgentError(ErrorCode.INTERNAL, "saving a KV state failed")
        return state

    def restore(self, seq: int, state: npt.NDArray[np.uint8], tokens: Sequence[int]) -> None:
        """Load a state saved by `save` into the empty sequence `seq`."""
        if self.tokens[seq]:
            raise ValueError(f"sequence {seq} is not empty")
        if self.free_cells < len(tokens):
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "no room for the cached prefix")
        if not llama_cpp.llama_state_seq_set_data(self.ctx.ctx, _u8(state), state.size, seq):
            raise EdgeAgentError(ErrorCode.INTERNAL, "restoring a KV state failed")
        self._note_use(seq)
        self.tokens[seq] = list(tokens)
        self._add_cells(seq, len(tokens))

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
        if total > self.free_cells:
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
            self._note_use(seq)
            self.tokens[seq].extend(tokens)
            self._add_cells(seq, len(tokens))
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

"""The resident model: GGUF weights loaded once, a context that can be resized.

Weights are mmap'ed and stay loaded for the life of the process; the context (KV
cache and compute buffers) is a separate object so the memory governor can recreate
it smaller or larger between tasks without reloading the weights.

Every method here blocks and must only be called on the engine's inference thread.
We use llama-cpp-python's thin wrappers (`_internals`) rather than `Llama` because
`Llama` ties one context to the model for its whole life and samples in C, while we
need our own sampling step to apply the llguidance token mask.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llguidance.llamacpp import lltokenizer_from_vocab

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.chat import render_segments, tokenize_chat
from edgeagent.inference.invariance import PROBE_TEXT, invariant_batch_rows
from edgeagent.inference.kvcache import KvContext, Logits
from edgeagent.inference.llama_log import (
    buffer_sizes,
    forget_buffer_sizes,
    quiet_llama_cpp,
    return_freed_memory,
)
from edgeagent.inference.prefix_cache import DEFAULT_LIMIT_BYTES, PrefixCache
from edgeagent.inference.prefix_cache import prefill as prefill_prompt
from edgeagent.inference.prompt import Message
from edgeagent.inference.speculative import MAX_DRAFT, DraftCosts

_PROBE_CTX = 256  # the invariance probe needs this much context


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ResidentModel:
    """Weights, tokenizer, chat template and the current context of one GGUF model."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int,
        n_ctx: int,
        n_batch: int,
        n_seq: int = 1,
        prefix_cache_bytes: int = DEFAULT_LIMIT_BYTES,
        repack: bool = False,
    ) -> None:
        if not path.is_file():
            raise EdgeAgentError(ErrorCode.CONFIG_INVALID, f"model file not found: {path}")
        quiet_llama_cpp()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_mmap = True
        # Repacked weights (llama.cpp's "extra buffer types") make a token's logits depend
        # on how many tokens share its batch; without them batches of a few tokens give
        # exactly the logits of single steps (inference/invariance.py).
        params.use_extra_bufts = repack
        self.path = path
        self.threads = threads
        self.n_batch = n_batch
        self._model = internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        self.metadata: dict[str, str] = self._model.metadata()
        self.n_vocab: int = self._model.n_vocab()
        self.n_ctx_train: int = self._model.n_ctx_train()
        self.eos: int = self._model.token_eos()
        self.eot: int = self._model.token_eot()
        self._add_bos: bool = self._model.add_bos_token()
        self.chat = self._chat_formatter()
        # Refuse at load, not per task, a template whose output cannot be split into
        # template text and message contents.
        render_segments(
            self._render, [{"role": "system", "content": "-"}, {"role": "user", "content": "-"}]
        )
        # Building the llguidance tokenizer walks the whole vocabulary (~1 s for 150k
        # tokens); it is done once and shared by every task's matcher.
        ends = sorted({t for t in (self.eos, self.eot) if t >= 0})
        self.lltokenizer = lltokenizer_from_vocab(self._model.vocab, eos_token=ends)
        self._pieces = [self._piece_bytes(t) for t in range(self.n_vocab)]
        self.digit_tokens = np.array(
            [p.isdigit() and p.isascii() for p in self._pieces], dtype=np.bool_
        )
        self.max_seq = n_seq  # sequences use_streams() may ask for
        self.n_seq = 1  # sequences (KV streams) of the current context
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        # What speculative verification costs here, learnt over every answer (speculative.py).
        self.draft_costs = DraftCosts()
        self._kv: KvContext | None = None
        self.n_ctx = 0
        self.kv_buffer_bytes = 0
        self.compute_buffer_bytes = 0
        # Called after every decode batch: a long prompt is many batches, and the
        # watchdog must see that the inference thread is alive through all of them.
        self._on_progress: Callable[[], None] | None = None
        self.resize(n_ctx)
        # How many tokens a speculative verification batch may hold (invariance.py).
        self.invariant_rows = 1
        if self.n_ctx >= _PROBE_CTX:
            probe = self.tokenize(PROBE_TEXT)
            self.invariant_rows = invariant_batch_rows(self.kv, probe, limit=1 + MAX_DRAFT)

    # -- context -------------------------------------------------------------

    @property
    def on_progress(self) -> Callable[[], None] | None:
        return self._on_progress

    @on_progress.setter
    def on_progress(self, callback: Callable[[], None] | None) -> None:
        self._on_progress = callback
        if self._kv is not None:
            self._kv.on_progress = callback

    @property
    def kv(self) -> KvContext:
        """The context (KV cells of every sequence); BUSY when it is released."""
        if self._kv is None:
            raise EdgeAgentError(ErrorCode.BUSY, "memory is short: no context is allocated")
        return self._kv

    def resize(self, n_ctx: int) -> None:
        """Recreate the context, one sequence of n_ctx tokens (weights stay loaded)."""
        self._make_context(min(n_ctx, self.n_ctx_train), 1)

    def use_streams(self, n_seq: int, moves: Mapping[int, int]) -> None:
        """Recreate the context with n_seq sequences of n_ctx tokens each (batch.py).

        The sequences in `moves` (old -> new) keep their KV: saved, then restored into
        the new context at the same positions; every other sequence is dropped (their
        fixed prompt parts are in the prefix cache).
        """
        kv = self.kv
        saved = [(new, kv.save(old), list(kv.tokens[old])) for old, new in moves.items()]
        try:
            self._make_context(self.n_ctx, n_seq)
        except EdgeAgentError:
            self._make_context(self.n_ctx, 1)  # what was there before (or less) fits
            saved = saved[:1]
            saved = [(0, state, tokens) for _, state, tokens in saved]
            raise
        finally:
            for new, state, tokens in saved:
                self.kv.restore(new, state, tokens)

    def _make_context(self, n_ctx: int, n_seq: int) -> None:
        self._free_context()
        forget_buffer_sizes()
        try:
            self._kv = self._new_context(n_ctx, n_seq)
        except ValueError as exc:
            self.n_ctx, self.n_seq = 0, 1
            raise EdgeAgentError(
                ErrorCode.CONTEXT_BUDGET, f"cannot allocate {n_seq} x {n_ctx} context tokens"
            ) from exc
        self.n_ctx, self.n_seq = n_ctx, n_seq
        # What llama.cpp reported allocating for this context (bytes).
        self.kv_buffer_bytes, self.compute_buffer_bytes = buffer_sizes()

    def _new_context(self, n_ctx: int, n_seq: int) -> KvContext:
        kv = KvContext(
            self._model,
            n_ctx=n_ctx,
            n_batch=self.n_batch,
            n_seq=n_seq,
            threads=self.threads,
            n_vocab=self.n_vocab,
        )
        kv.on_progress = self._on_progress
        return kv

    @contextlib.contextmanager
    def scratch_context(self, n_ctx: int, n_seq: int) -> Iterator[KvContext]:
        """A small context of its own beside the current one (load-time probes), freed
        and its memory given back on leaving."""
        kv = self._new_context(n_ctx, n_seq)
        try:
            yield kv
        finally:
            kv.close()
            return_freed_memory()

    def release(self) -> None:
        """Free the context (memory pressure); the weights stay. resize() brings it back."""
        self._free_context()
        self.n_ctx, self.n_seq = 0, 1

    def _free_context(self) -> None:
        if self._kv is not None:
            self._kv.close()
            self._kv = None
            return_freed_memory()

    def close(self) -> None:
        self._free_context()
        self._model.close()

    # -- text ----------------------------------------------------------------

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        template = self.metadata.get("tokenizer.chat_template")
        if not template:
            raise EdgeAgentError(
                ErrorCode.CONFIG_INVALID, f"{self.path} has no chat template in its GGUF metadata"
            )
        piece = self._model.token_get_text
        return Jinja2ChatFormatter(
            template=template,
            eos_token=piece(self.eos),
            bos_token=piece(self._model.token_bos()) if self._model.token_bos() >= 0 else "",
            add_generation_prompt=True,
        )

    def _render(self, messages: list[Message]) -> str:
        return self.chat(messages=messages).prompt  # type: ignore[arg-type]

    def render_chat(self, messages: Sequence[Message]) -> list[int]:
        """Chat messages -> prompt tokens, with the template from the GGUF file.

        Only the template's own text may become control tokens; message contents are
        plain text (see edgeagent.inference.chat). The template writes BOS when the
        model wants one.
        """
        return tokenize_chat(
            self._render, lambda text, special: self.tokenize(text, special=special), messages
        )

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        tokens: list[int] = self._model.tokenize(
            text.encode("utf-8"), add_bos=False, special=special
        )
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        raw: bytes = self._model.detokenize(list(tokens), special=False)
        return raw.decode("utf-8", errors="replace")

    def _piece_bytes(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        special = False  # control tokens render as nothing, like detokenize()
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buffer, 64, 0, special)
        return buffer.raw[: max(n, 0)]

    def piece(self, token: int) -> str:
        """Text of one token (partial UTF-8 sequences come out as U+FFFD)."""
        return self._pieces[token].decode("utf-8", errors="replace")

    def is_end_token(self, token: int) -> bool:
        return token in (self.eos, self.eot)

    # -- evaluation (sequence 0) ------------------------------------------------

    def prefill(self, prompt: Sequence[int]) -> int:
        """Put prompt into the KV cache of sequence 0, reusing what can be reused.

        A `Prompt` with a fixed part reuses it from this sequence, the prefix cache or
        computes (and caches) it; a plain token list reuses the longest prefix this
        sequence holds (prefix_cache.prefill). Returns how many tokens were reused.
        """
        kv = self.kv
        if len(prompt) > kv.n_ctx:
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "prompt longer than the context")
        return prefill_prompt(kv, 0, prompt, self.prefix_cache)

    def feed(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after what is cached; logits of the last one become current."""
        self.kv.feed(0, tokens)

    def feed_all(self, tokens: Sequence[int]) -> list[Logits]:
        """Evaluate tokens in one batch; logits after each of them (views, valid until
        the next decode). For speculative decoding."""
        kv = self.kv
        (start,) = kv.decode([(0, tokens, True)])
        return [kv.logits(start + i) for i in range(len(tokens))]

    def rewind(self, count: int) -> None:
        """Forget the last `count` tokens fed (a rejected speculation)."""
        kv = self.kv
        kv.remove(0, len(kv.tokens[0]) - count)

    def logits(self) -> Logits:
        """Logits for the token after the last one fed (a view, valid until the next feed)."""
        return self.kv.logits(-1)

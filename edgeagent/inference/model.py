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

import ctypes
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
import structlog
from llama_cpp import _internals as internals
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llguidance.llamacpp import lltokenizer_from_vocab

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.chat import render_segments, tokenize_chat
from edgeagent.inference.prompt import Message

Logits = npt.NDArray[np.float32]
log = structlog.get_logger("edgeagent.llama_cpp")

# llama.cpp writes hundreds of info lines per context. We keep its warnings and errors
# as log events, and read from its info lines the buffer sizes it allocated: they are
# the measured cost of a context the memory governor works with
# (ggml_log_level: 2 = info, 3 = warn, 4 = error).
_GGML_INFO, _GGML_WARN, _GGML_ERROR = 2, 3, 4
_BUFFER_RE = re.compile(r"CPU (KV|compute) buffer size =\s*([0-9.]+) MiB")
_last_buffers: dict[str, int] = {}


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _llama_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace").strip()
    if level == _GGML_INFO:
        match = _BUFFER_RE.search(message)
        if match:
            _last_buffers[match.group(1).lower()] = int(float(match.group(2)) * 2**20)
    elif level in (_GGML_WARN, _GGML_ERROR) and message:
        (log.error if level == _GGML_ERROR else log.warning)("llama.cpp", message=message)


def _return_freed_memory() -> None:
    """Give freed heap memory back to the kernel (glibc only).

    After a large context was freed, glibc raises its mmap threshold and serves the
    next smaller KV caches (up to 32 MiB) from the heap, which free() does not return:
    the memory governor would count as released what the kernel never got back.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to do
        return
    libc.malloc_trim(0)


def quiet_llama_cpp() -> None:
    llama_cpp.llama_log_set(_llama_log, ctypes.c_void_p(0))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ResidentModel:
    """Weights, tokenizer, chat template and the current context of one GGUF model."""

    def __init__(self, path: Path, *, threads: int, n_ctx: int, n_batch: int) -> None:
        if not path.is_file():
            raise EdgeAgentError(ErrorCode.CONFIG_INVALID, f"model file not found: {path}")
        quiet_llama_cpp()
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.use_mmap = True
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
        self._ctx: Any = None
        self._batch: Any = None
        self.n_ctx = 0
        self.kv_buffer_bytes = 0
        self.compute_buffer_bytes = 0
        # Called after every decode batch: a long prompt is many batches, and the
        # watchdog must see that the inference thread is alive through all of them.
        self.on_progress: Callable[[], None] | None = None
        # Tokens whose keys/values are in the KV cache, in order: a new prompt that
        # starts with the same system prompt reuses them instead of recomputing.
        self._kv_tokens: list[int] = []
        self.resize(n_ctx)

    # -- context -------------------------------------------------------------

    def resize(self, n_ctx: int) -> None:
        """Recreate the context with room for n_ctx tokens (weights stay loaded)."""
        n_ctx = min(n_ctx, self.n_ctx_train)
        self._free_context()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = min(self.n_batch, n_ctx)
        params.n_ubatch = min(self.n_batch, n_ctx)
        params.n_threads = self.threads
        params.n_threads_batch = self.threads
        params.no_perf = True
        _last_buffers.clear()
        try:
            self._ctx = internals.LlamaContext(model=self._model, params=params, verbose=False)
        except ValueError as exc:
            raise EdgeAgentError(
                ErrorCode.CONTEXT_BUDGET, f"cannot allocate a context of {n_ctx} tokens"
            ) from exc
        self._batch = internals.LlamaBatch(
            n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False
        )
        self.n_ctx = n_ctx
        self._kv_tokens = []
        # What llama.cpp reported allocating for this context (bytes).
        self.kv_buffer_bytes = _last_buffers.get("kv", 0)
        self.compute_buffer_bytes = _last_buffers.get("compute", 0)

    def release(self) -> None:
        """Free the context (memory pressure); the weights stay. resize() brings it back."""
        self._free_context()
        self.n_ctx = 0
        self._kv_tokens = []

    def _free_context(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None
            _return_freed_memory()

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

    # -- evaluation ----------------------------------------------------------

    def prefill(self, prompt: Sequence[int]) -> int:
        """Put prompt into the KV cache, reusing the longest cached prefix.

        Returns how many prompt tokens were reused. At least the last token is always
        evaluated, because its logits are what the first answer token is sampled from.
        """
        if len(prompt) > self.n_ctx:
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "prompt longer than the context")
        reuse = 0
        limit = min(len(prompt) - 1, len(self._kv_tokens))
        while reuse < limit and self._kv_tokens[reuse] == prompt[reuse]:
            reuse += 1
        self._ctx.kv_cache_seq_rm(-1, reuse, -1)
        self._kv_tokens = self._kv_tokens[:reuse]
        self.feed(prompt[reuse:])
        return reuse

    def feed(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after what is cached; logits of the last one become current."""
        if len(self._kv_tokens) + len(tokens) > self.n_ctx:
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "context window is full")
        for start in range(0, len(tokens), self._batch._n_tokens):  # noqa: SLF001 - batch capacity
            chunk = list(tokens[start : start + self._batch._n_tokens])  # noqa: SLF001
            self._batch.set_batch(batch=chunk, n_past=len(self._kv_tokens), logits_all=False)
            self._ctx.decode(self._batch)
            self._kv_tokens.extend(chunk)
            if self.on_progress is not None:
                self.on_progress()

    def logits(self) -> Logits:
        """Logits for the token after the last one fed (a view, valid until the next feed)."""
        pointer = self._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )

    @property
    def raw_context(self) -> Any:
        """The llama_context pointer, for llama.cpp samplers (benchmarks only)."""
        return self._ctx.ctx

    @property
    def vocab(self) -> Any:
        return self._model.vocab

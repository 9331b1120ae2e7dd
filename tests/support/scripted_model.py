"""A scripted stand-in for the resident model: a tiny vocabulary, logits from a script.

It implements the engine's `Decoder`/`EngineModel` protocols, so decoding, the engine
and overflow handling run for real against it in milliseconds, without llama.cpp. It
holds one sequence (`max_seq` 1, unless asked for more), verifies no drafts exactly
(`invariant_rows` 1) and has a prefix cache of 0 bytes: the engine takes the branches it
takes for a real model loaded with that `parallel` that cannot speculate.

Vocabulary: the 256 single bytes (so any text can be written), a few multi-byte words
(so forced tokens and tokenization are not trivially byte-wise), and control tokens
(an end token and the chat template's turn markers).

What the model "wants" at each step is scripted in one of two ways:

* `steps`: one preference list per call of `logits()`, best first
  (`[["x", "7"], ["}"]]`: first it wants "x", then "7"; next step "}");
* `text`: the model wants to write this text; at each step it prefers the longest
  token that continues it from what was fed so far, then the end token.

Everything else gets the lowest logit. What was prefilled and fed is recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.chat import tokenize_chat
from edgeagent.inference.prefix_cache import PrefixCache
from edgeagent.inference.speculative import DraftCosts
from support.scripted_kv import ScriptedKv

END = "<|end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
WORDS = ('{"', '":', '"}', ',"', "zone", "minutes", "ok", "true", "false", "null", "ab")
SPECIALS = (END, IM_START, IM_END)
VOCAB: tuple[bytes, ...] = (
    *(bytes([b]) for b in range(256)),
    *(w.encode() for w in WORDS),
    *(s.encode() for s in SPECIALS),
)
TOKEN_ID = {text: index for index, text in enumerate(VOCAB)}
END_ID = TOKEN_ID[END.encode()]
SPECIAL_IDS = frozenset(TOKEN_ID[s.encode()] for s in SPECIALS)
# SmolLM2-like GGUF metadata: 4 layers x 4 KV heads x (16 + 16) x 2 bytes = 1 KiB/token.
METADATA = {
    "general.architecture": "llama",
    "llama.block_count": "4",
    "llama.attention.head_count": "4",
    "llama.attention.head_count_kv": "4",
    "llama.embedding_length": "64",
}
KV_BYTES_PER_TOKEN = 1024


def token(text: str) -> int:
    """Id of a token given by its text (a word, a special token or one character)."""
    return TOKEN_ID[text.encode()]


def tokenize(text: str, *, special: bool = False) -> list[int]:
    """Greedy longest match; special tokens only with special=True (like llama.cpp)."""
    data = text.encode()
    candidates = [
        (entry, index)
        for index, entry in enumerate(VOCAB)
        if len(entry) > 1 and (special or index not in SPECIAL_IDS)
    ]
    candidates.sort(key=lambda c: -len(c[0]))
    out: list[int] = []
    position = 0
    while position < len(data):
        for entry, index in candidates:
            if data.startswith(entry, position):
                out.append(index)
                position += len(entry)
                break
        else:
            out.append(data[position])
            position += 1
    return out


def detokenize(tokens: Sequence[int]) -> str:
    """Text of tokens; control tokens render as nothing (like llama.cpp, special=False)."""
    return b"".join(VOCAB[t] for t in tokens if t not in SPECIAL_IDS).decode(
        "utf-8", errors="replace"
    )


class _TinyTokenizer:
    """What llguidance's TokenizerWrapper reads from a tokenizer."""

    def __init__(self) -> None:
        self.eos_token_id = END_ID
        self.bos_token_id = None
        self.tokens = list(VOCAB)
        self.special_token_ids = sorted(SPECIAL_IDS)

    def __call__(self, text: bytes) -> list[int]:
        return tokenize(text.decode("utf-8", errors="replace"))


LLTOKENIZER = LLTokenizer(TokenizerWrapper(_TinyTokenizer()))


def render_template(messages: list[dict[str, str]]) -> str:
    """A ChatML template, like SmolLM2's."""
    turns = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return f"{turns}{IM_START}assistant\n"


class ScriptedModel:
    """Implements Decoder and EngineModel (edgeagent.inference) for unit tests."""

    n_vocab = len(VOCAB)
    digit_tokens = np.array([v.isdigit() and v.isascii() for v in VOCAB], dtype=np.bool_)
    lltokenizer = LLTOKENIZER
    metadata = METADATA
    n_seq = 1
    invariant_rows = 1  # no exact verification: the engine does not speculate

    def __init__(
        self,
        *,
        steps: Sequence[Sequence[str]] = (),
        text: str | None = None,
        n_ctx: int = 2048,
        n_ctx_train: int = 8192,
        compute_fixed_bytes: int = 2**20,
        compute_bytes_per_token: int = 0,
        max_seq: int = 1,
    ) -> None:
        """max_seq: sequences it is loaded to hold; from 2 on the engine gives it a
        batcher, which serves it one task at a time on sequence 0 (scripted_kv.py)."""
        self.max_seq = max_seq
        self._steps = [list(s) for s in steps]
        self._text = text
        self.n_ctx_train = n_ctx_train
        self.compute_fixed_bytes = compute_fixed_bytes
        self.compute_bytes_per_token = compute_bytes_per_token
        self.n_ctx = 0
        self.resize(n_ctx)
        self.on_progress: Callable[[], None] | None = None
        self.prefills: list[list[int]] = []
        self.fed: list[list[int]] = []  # batches fed after the prompt, in order
        self.logits_calls = 0
        self.closed = False
        # A call that blocks until `unwedge` is set (a wedged llama.cpp call).
        self.wedge_prefill = False
        self.wedged = threading.Event()
        self.unwedge = threading.Event()
        self._kv: list[int] = []
        self._written: list[int] = []
        self.verified: list[list[int]] = []  # batches fed by feed_all
        self.rewound: list[int] = []  # counts given to rewind
        self.prefix_cache = PrefixCache(0)
        self.draft_costs = DraftCosts()
        self._kv_view = ScriptedKv(self)

    # -- EngineModel ----------------------------------------------------------

    @property
    def kv_buffer_bytes(self) -> int:
        return self.n_ctx * KV_BYTES_PER_TOKEN

    @property
    def compute_buffer_bytes(self) -> int:
        if self.n_ctx == 0:
            return 0
        return self.compute_fixed_bytes + self.compute_bytes_per_token * self.n_ctx

    def render_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return tokenize_chat(
            render_template, lambda text, special: tokenize(text, special=special), messages
        )

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return tokenize(text, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return detokenize(tokens)

    def resize(self, n_ctx: int) -> None:
        self.n_ctx = min(n_ctx, self.n_ctx_train)
        self._kv = []

    def release(self) -> None:
        self.n_ctx = 0
        self._kv = []

    def close(self) -> None:
        self.closed = True

    # -- the batcher's view (max_seq > 1), one sequence -------------------------------

    @property
    def kv(self) -> ScriptedKv:
        return self._kv_view

    def use_streams(self, n_seq: int, moves: Any) -> None:  # noqa: ARG002 - never called
        raise AssertionError("the scripted model holds one sequence")

    def scratch_context(self, n_ctx: int, n_seq: int) -> Any:  # noqa: ARG002 - never called
        raise AssertionError("the scripted model has no scratch context")

    # -- Decoder ---------------------------------------------------------------

    def prefill(self, prompt: Sequence[int]) -> int:
        if self.wedge_prefill:
            self.wedged.set()
            self.unwedge.wait()
        if len(prompt) > self.n_ctx:
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "prompt longer than the context")
        reuse = 0
        limit = min(len(prompt) - 1, len(self._kv))
        while reuse < limit and self._kv[reuse] == prompt[reuse]:
            reuse += 1
        self._kv = list(prompt)
        self.prefills.append(list(prompt))
        self._written = []
        if self.on_progress is not None:
            self.on_progress()
        return reuse

    def feed(self, tokens: Sequence[int]) -> None:
        if len(self._kv) + len(tokens) > self.n_ctx:
            raise EdgeAgentError(ErrorCode.CONTEXT_BUDGET, "context window is full")
        self.fed.append(list(tokens))
        self._kv.extend(tokens)
        self._written.extend(tokens)
        if self.on_progress is not None:
            self.on_progress()

    def logits(self) -> npt.NDArray[np.float32]:
        self.logits_calls += 1
        logits = np.zeros(self.n_vocab, dtype=np.float32)
        for rank, index in enumerate(reversed(self._preferences())):
            logits[index] = float(rank + 1)
        return logits

    def is_end_token(self, token: int) -> bool:
        return token == END_ID

    def piece(self, token: int) -> str:
        return "" if token in SPECIAL_IDS else VOCAB[token].decode("utf-8", errors="replace")

    # -- speculative decoding (edgeagent.inference.speculative.DraftTarget) -------

    def feed_all(self, tokens: Sequence[int]) -> list[npt.NDArray[np.float32]]:
        """Feed tokens as one batch; the logits after each of them (`text` scripts only:
        `steps` are consumed one per logits() call). Recorded in `verified`."""
        self.feed(tokens)
        self.verified.append(list(tokens))
        written = self._written
        rows = []
        for end in range(len(written) - len(tokens) + 1, len(written) + 1):
            self._written = written[:end]
            rows.append(self.logits())
        self._written = written
        return rows

    def rewind(self, count: int) -> None:
        """Forget the last `count` tokens fed; recorded in `rewound`."""
        self.rewound.append(count)
        del self._kv[len(self._kv) - count :]
        del self._written[len(self._written) - count :]

    # -- the script -------------------------------------------------------------

    def _preferences(self) -> list[int]:
        """Token ids the model wants now, best first."""
        if self._steps:
            return [token(t) for t in self._steps.pop(0)]
        if self._text is None:
            return []
        written = detokenize(self._written).encode()
        target = self._text.encode()
        if not target.startswith(written):
            return []  # off script: no preference
        rest = target[len(written) :]
        if not rest:
            return [END_ID]
        best = max(
            (i for i, v in enumerate(VOCAB) if i not in SPECIAL_IDS and rest.startswith(v)),
            key=lambda i: len(VOCAB[i]),
        )
        return [best]


class ScriptedFactory:
    """An Engine model factory (`Engine(cfg, factory=ScriptedFactory(...))`).

    Each model is created at the context size the engine asks for, with the keyword
    arguments given here (of `model_class`, a ScriptedModel subclass if a test needs
    one); `models` holds every model made, for the test to look at.
    """

    def __init__(self, model_class: type[ScriptedModel] | None = None, **kwargs: Any) -> None:
        self._class = model_class or ScriptedModel
        self._kwargs = kwargs
        self.models: list[ScriptedModel] = []

    def __call__(self, cfg: ModelConfig) -> ScriptedModel:
        model = self._class(n_ctx=cfg.n_ctx, **self._kwargs)
        self.models.append(model)
        return model


def grammar_accepts(grammar: str, text: str) -> bool:
    """Whether a compiled llguidance grammar accepts text, fed byte by byte (the tiny
    vocabulary's first 256 tokens are the bytes)."""
    matcher = LLMatcher(LLTOKENIZER, grammar, log_level=0)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()

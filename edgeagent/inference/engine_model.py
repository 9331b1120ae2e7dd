"""What the engine needs from a model, and how the real one is loaded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.batch import SlotModel
from edgeagent.inference.batch_costs import SequenceModel
from edgeagent.inference.batch_rule import MAX_PARALLEL
from edgeagent.inference.model import ResidentModel, sha256_file
from edgeagent.inference.prompt import Message
from edgeagent.inference.speculative import DraftTarget


class EngineModel(DraftTarget, SlotModel, SequenceModel, Protocol):
    """Everything the engine uses of a model (ResidentModel in production; the scripted
    model of the unit tests). Fakes and production take the same branches: a model
    that holds one sequence (`max_seq` 1) runs one task at a time, one that cannot
    verify drafts exactly (`invariant_rows` 1) does not speculate, one without a prefix
    cache has a `PrefixCache` of 0 bytes."""

    n_ctx: int
    n_ctx_train: int
    lltokenizer: Any
    metadata: dict[str, str]

    # Read only: what the context's buffers hold now (the memory loop's capacity view).
    @property
    def kv_buffer_bytes(self) -> int: ...
    @property
    def compute_buffer_bytes(self) -> int: ...

    # Called after every decode batch, so a long prompt shows progress to the watchdog.
    on_progress: Callable[[], None] | None

    def render_chat(self, messages: Sequence[Message]) -> list[int]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...
    def resize(self, n_ctx: int) -> None: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


ModelFactory = Callable[[ModelConfig], EngineModel]


def load_resident(cfg: ModelConfig, *, exact: bool = True) -> EngineModel:
    """The real model. exact: without repacked weights, so that batches of a few tokens
    give the logits of single steps (inference/invariance.py); False: llama.cpp's default
    (faster batches on some CPUs; batched and speculative answers may then differ in
    the last bits from one-at-a-time greedy ones)."""
    if cfg.sha256 is not None:
        actual = sha256_file(cfg.path)
        if actual != cfg.sha256:
            raise EdgeAgentError(
                ErrorCode.CONFIG_INVALID,
                f"model.sha256: {cfg.path} has sha256 {actual}, expected {cfg.sha256}",
            )
    return ResidentModel(
        cfg.path,
        threads=cfg.threads,
        n_ctx=cfg.n_ctx,
        n_batch=cfg.n_batch,
        n_seq=MAX_PARALLEL if cfg.parallel == "auto" else cfg.parallel,
        repack=not exact,
    )

"""The plain llama-cpp-python approach, as a yardstick for edgeagent's answers.

What a developer would write without edgeagent: `Llama.create_chat_completion` with
`response_format={"type": "json_object", "schema": ...}` (llama-cpp-python turns the
schema into a GBNF grammar), greedy, the same system prompt and catalog text in the
system message as edgeagent's. It answers the same `Task`s as the Engine, so the eval
runs both through the same loop and scores them the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from edgeagent.config import ModelConfig
from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.prompt import build_messages
from edgeagent.inference.shots import shot_messages
from edgeagent.inference.task import Task


@dataclass(frozen=True, slots=True)
class BaselineAnswer:
    output: Any
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    prompt_ms: float
    decode_ms: float


class LlamaCppBaseline:
    """Answers tasks with llama-cpp-python's own JSON-schema mode (no edgeagent decoding)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self._llm: Any = None
        self.chat_format: str | None = None

    def load(self) -> None:
        # Imported here: the rest of the eval must not need llama.cpp to be importable.
        from llama_cpp import Llama  # noqa: PLC0415

        self._llm = Llama(
            model_path=str(self.cfg.path),
            n_ctx=self.cfg.n_ctx,
            n_batch=self.cfg.n_batch,
            n_threads=self.cfg.threads,
            n_threads_batch=self.cfg.threads,
            seed=self.cfg.seed,
            verbose=False,
        )
        self.chat_format = self._llm.chat_format

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def answer_blocking(self, task: Task) -> BaselineAnswer:
        if self._llm is None:
            raise EdgeAgentError(ErrorCode.INTERNAL, "the baseline model is not loaded")
        messages = build_messages(
            self.cfg.system_prompt,
            task.spec.instructions,
            task.content,
            shot_messages(task.shots),
        )
        started = time.perf_counter()
        response = self._llm.create_chat_completion(
            messages=messages,
            response_format={"type": "json_object", "schema": task.spec.json_schema},
            temperature=0.0,  # llama-cpp-python samples greedily at temperature 0
            top_k=1,
            repeat_penalty=1.0,
            max_tokens=task.max_tokens,
            seed=self.cfg.seed,
        )
        elapsed = (time.perf_counter() - started) * 1000
        choice = response["choices"][0]
        text = choice["message"]["content"] or ""
        usage = response.get("usage", {})
        try:
            output = json.loads(text)
        except json.JSONDecodeError as exc:
            why = "cut at max_tokens" if choice.get("finish_reason") == "length" else exc.msg
            raise EdgeAgentError(
                ErrorCode.OUTPUT_INVALID, f"answer is not JSON ({why})", partial=text[:200]
            ) from exc
        return BaselineAnswer(
            output=output,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            # llama-cpp-python reuses the longest cached prefix too, but does not say how much.
            cached_prompt_tokens=0,
            completion_tokens=int(usage.get("completion_tokens", 0)),
            prompt_ms=0.0,
            decode_ms=elapsed,
        )

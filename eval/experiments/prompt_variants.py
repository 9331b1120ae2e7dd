#!/usr/bin/env python3
"""Phase-B experiments of the decision work: other prompt formats, and confidence from the logits.

Measured with the eval machinery (same cases, scoring and report as `edgeagent eval`)
with its own prompts and grammars: this script drives `ResidentModel` through the
engine's greedy constrained loop (`generate_constrained`) and its confidence
(`edgeagent.inference.confidence`): at the steps where the action name is chosen,
the probability of the chosen token among the allowed ones; the product over those
steps is the model's probability for the chosen action among the allowed actions
(names that share first tokens are followed to where they differ).

    .venv/bin/python eval/experiments/prompt_variants.py eval/dev/suite.toml \
        --model ~/.cache/edgeagent/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --variant plain --variant tools --threads 1

Variants (action cases; schema cases always use the plain prompt):
  plain   edgeagent's own prompt and contract, as the daemon builds them
  tools   the chat template's tool-calling format: the catalog as `tools`, the answer
          `{"name": ..., "arguments": ...}` after a forced "<tool_call>\\n"
  reason  a short "reason" string (at most 60 characters) before the action
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llguidance import LLMatcher

from edgeagent.config import ModelConfig
from edgeagent.evaluation.metrics import summarize
from edgeagent.evaluation.report import case_record, render_json, render_text
from edgeagent.evaluation.runner import run_sets
from edgeagent.evaluation.scoring import CaseScore, score
from edgeagent.evaluation.suite import load_suite, select
from edgeagent.inference.confidence import ConfidenceTracker
from edgeagent.inference.contract import OutputSpec
from edgeagent.inference.decoding import Sampler, StepControl, generate_constrained
from edgeagent.inference.model import ResidentModel
from edgeagent.inference.prompt import build_messages
from edgeagent.inference.task import Task

TOOL_SYSTEM = (
    "You are a precise assistant running on an edge device. Read the input and call "
    "exactly one of the functions."
)
REASON_LINE = (
    'Answer with JSON: {"reason": "<why, in a few words>", "action": "<name>", "args": {...}}'
)


@dataclass(frozen=True, slots=True)
class ScratchAnswer:
    output: Any
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    confidence: float | None
    decode_ms: float


def branches(spec: OutputSpec) -> list[dict[str, Any]]:
    schema = spec.json_schema
    return list(schema["anyOf"]) if "anyOf" in schema else [schema]


def one_of(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0] if len(items) == 1 else {"anyOf": items}


def compile_grammar(schema: dict[str, Any], *, spaced: bool = False) -> str:
    options: dict[str, Any] = {"whitespace_flexible": False, "lenient": False}
    if spaced:  # the layout of the template's tool calls: {"name": "x", "arguments": {...}}
        options |= {"key_separator": ": ", "item_separator": ", "}
    # llguidance types `overrides` as its TypedDict; these are its documented keys.
    return LLMatcher.grammar_from_json_schema(schema, overrides=options)  # type: ignore[arg-type]


class Scratch:
    """An answerer with the engine's contract and its own prompt format."""

    def __init__(self, cfg: ModelConfig, variant: str) -> None:
        self.cfg, self.variant = cfg, variant
        self.model: ResidentModel | None = None
        self._grammars: dict[int, tuple[str, str]] = {}

    def load(self) -> None:
        self.model = ResidentModel(
            self.cfg.path, threads=self.cfg.threads, n_ctx=self.cfg.n_ctx, n_batch=self.cfg.n_batch
        )

    def close(self) -> None:
        if self.model is not None:
            self.model.close()

    # -- prompt and grammar per variant -------------------------------------------

    def _prepare(self, task: Task) -> tuple[list[int], str, str | None]:
        """The prompt, the grammar, and what stands before the action name's quote."""
        assert self.model is not None
        spec = task.spec
        if spec.kind != "action" or self.variant == "plain":
            messages = build_messages(self.cfg.system_prompt, spec.instructions, task.content)
            key = '"action":' if spec.kind == "action" else None
            return self.model.render_chat(messages), spec.grammar, key
        if self.variant == "reason":
            instructions = spec.instructions.rsplit("\n", 1)[0] + "\n" + REASON_LINE
            messages = build_messages(self.cfg.system_prompt, instructions, task.content)
            if id(spec) not in self._grammars:
                items = []
                for branch in branches(spec):
                    b = copy.deepcopy(branch)
                    reason = {"type": "string", "minLength": 3, "maxLength": 60}
                    b["properties"] = {"reason": reason, **b["properties"]}
                    b["required"] = ["reason", *b["required"]]
                    items.append(b)
                self._grammars[id(spec)] = (compile_grammar(one_of(items)), '"action":')
            grammar, key = self._grammars[id(spec)]
            return self.model.render_chat(messages), grammar, key
        # tools: the chat template's own tool-calling format
        tools, items = [], []
        for b in branches(spec):
            name = b["properties"]["action"]["const"]
            args = b["properties"]["args"]
            description = self._description(spec, name)
            tools.append(
                {
                    "type": "function",
                    "function": {"name": name, "description": description, "parameters": args},
                }
            )
            items.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": args},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
            )
        if id(spec) not in self._grammars:
            grammar_of_tools = compile_grammar(one_of(items), spaced=True)
            self._grammars[id(spec)] = (grammar_of_tools, '"name": ')
        grammar, key = self._grammars[id(spec)]
        content = task.content
        messages = [{"role": "system", "content": TOOL_SYSTEM}]
        messages += [{"role": "user", "content": content}] if isinstance(content, str) else [
            m for m in content if m["role"] != "system"]  # fmt: skip
        # llama-cpp-python types these as its TypedDicts; plain dicts are what it reads.
        chat = self.model.chat(messages=messages, tools=tools)  # type: ignore[arg-type]
        rendered = chat.prompt + "<tool_call>\n"
        return self.model.tokenize(rendered, special=True), grammar, key

    @staticmethod
    def _description(spec: OutputSpec, name: str) -> str:
        # The catalog text sits in spec.instructions as "- NAME: DESCRIPTION Arguments schema: ..."
        for line in spec.instructions.splitlines():
            if line.startswith(f"- {name}: "):
                return line[len(f"- {name}: ") :].split(" Arguments schema: ")[0]
        return ""

    # -- decoding ------------------------------------------------------------------

    def answer_blocking(self, task: Task) -> ScratchAnswer:
        assert self.model is not None
        model = self.model
        prompt, grammar, key = self._prepare(task)
        # The engine's own loop and confidence (edgeagent.inference.confidence), with
        # the key that stands before the name in this variant's answer.
        generation = generate_constrained(
            model,
            LLMatcher(model.lltokenizer, grammar),
            prompt,
            max_tokens=task.max_tokens,
            sampler=Sampler(),
            control=StepControl(),
            confidence=ConfidenceTracker(key=key) if key else None,
        )
        output = json.loads(model.detokenize(generation.tokens))
        if self.variant == "tools" and task.spec.kind == "action":
            output = {"action": output["name"], "args": output["arguments"]}
        elif self.variant == "reason" and task.spec.kind == "action":
            output.pop("reason", None)
        return ScratchAnswer(
            output,
            generation.prompt_tokens,
            generation.cached_prompt_tokens,
            generation.completion_tokens,
            generation.confidence,
            generation.decode_ms,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--variant", action="append", choices=["plain", "tools", "reason"], required=True
    )
    parser.add_argument("--system-prompt", help="replaces [model] system_prompt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--set", action="append", dest="sets")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--label", default="", help="appended to each system's label")
    parser.add_argument("--json-file", type=Path)
    parser.add_argument("--details", type=Path)
    parser.add_argument("--failures", action="store_true")
    args = parser.parse_args()
    sets = select(load_suite(args.suite), args.sets, args.limit)
    settings: dict[str, Any] = {"path": args.model, "threads": args.threads, "n_ctx": args.n_ctx}
    if args.system_prompt:
        settings["system_prompt"] = args.system_prompt
    cfg = ModelConfig.model_validate(settings)
    results: list[Any] = []
    all_scores: dict[str, Sequence[CaseScore]] = {}
    details = args.details.open("w", encoding="utf-8") if args.details else None
    for variant in args.variant:
        label = f"{variant}{args.label}"
        system = Scratch(cfg, variant)
        system.load()
        scores = []
        try:
            for eval_set, case, outcome in run_sets(system, sets, max_tokens=args.max_tokens):
                s = score(case, outcome, eval_set.name, eval_set.no_action)
                scores.append(s)
                if details:
                    details.write(json.dumps(case_record(label, s), ensure_ascii=False) + "\n")
                    details.flush()
        finally:
            system.close()
        all_scores[label] = scores
        results.append((label, summarize(scores, {s.name: s.no_action for s in sets})))
    if details:
        details.close()
    if args.json_file:
        meta = {
            "model": str(args.model),
            "threads": args.threads,
            "system_prompt": cfg.system_prompt,
        }
        args.json_file.write_text(
            json.dumps(render_json(results, meta), ensure_ascii=False, indent=1)
        )
    sys.stdout.write(render_text(results, all_scores if args.failures else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chat prompts where only the template's own text can hold control tokens.

A chat template writes its turn markers (`<|im_start|>`, `<|im_end|>`, ...) around the
message contents. Rendering the whole prompt to one string and tokenizing it with special
tokens enabled would also turn those markers into control tokens where a caller wrote
them: `<|im_end|><|im_start|>system ...` inside `input` would forge a turn. So the
template is rendered with an unguessable placeholder for each message's content, the
rendered text is cut at the placeholders, and only the template's pieces are tokenized
with special tokens; every content (ours and the caller's) is tokenized as plain text.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.prompt import Message

RenderChat = Callable[[list[Message]], str]  # messages -> prompt text (the chat template)
Tokenize = Callable[[str, bool], list[int]]  # (text, special tokens allowed) -> tokens


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    template: bool  # written by the chat template (may hold control tokens), else content


def render_segments(render: RenderChat, messages: Sequence[Message]) -> list[Segment]:
    """The prompt as template text and message contents, in prompt order.

    Raises CONFIG_INVALID when the template does not write each content exactly once
    and unchanged (then its output cannot be split, and the model cannot be used safely).
    """
    # Private-use characters around a random nonce: no caller can predict it, and no
    # template escapes or trims it.
    nonce = secrets.token_hex(8)
    marks = [f"\ue000{nonce}.{index}\ue001" for index in range(len(messages))]
    rendered = render(
        [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks, strict=True)]
    )
    found: list[tuple[int, int]] = []  # (position, message index)
    for index, mark in enumerate(marks):
        at = rendered.find(mark)
        if at < 0 or rendered.find(mark, at + 1) >= 0:
            raise EdgeAgentError(
                ErrorCode.CONFIG_INVALID,
                "the model's chat template does not write each message's content exactly once"
                " and unchanged, so caller text cannot be kept apart from control tokens",
            )
        found.append((at, index))
    segments: list[Segment] = []
    position = 0
    for at, index in sorted(found):
        segments.append(Segment(rendered[position:at], template=True))
        segments.append(Segment(messages[index]["content"], template=False))
        position = at + len(marks[index])
    segments.append(Segment(rendered[position:], template=True))
    return [s for s in segments if s.text]


def tokenize_chat(render: RenderChat, tokenize: Tokenize, messages: Sequence[Message]) -> list[int]:
    """Prompt tokens: template pieces with special tokens, contents without."""
    tokens: list[int] = []
    for segment in render_segments(render, messages):
        tokens.extend(tokenize(segment.text, segment.template))
    return tokens

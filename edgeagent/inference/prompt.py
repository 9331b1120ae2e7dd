"""Chat messages for a task: our system message first, then the caller's content.

The system message holds what is the same for every task with the same output
contract (role, schema or action list), so consecutive tasks share a prompt prefix
whose KV cache is reused (prompt processing is the slow part on a Pi).
"""

from __future__ import annotations

from collections.abc import Sequence

from edgeagent.errors import EdgeAgentError, ErrorCode

Message = dict[str, str]
_ROLES = frozenset({"system", "user", "assistant"})


def build_messages(
    system_prompt: str, instructions: str, content: str | Sequence[Message]
) -> list[Message]:
    system = f"{system_prompt}\n{instructions}"
    if isinstance(content, str):
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]
    messages = [dict(m) for m in content]
    if not messages:
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "messages is empty")
    for index, message in enumerate(messages):
        if set(message) != {"role", "content"} or message["role"] not in _ROLES:
            raise EdgeAgentError(
                ErrorCode.INVALID_REQUEST,
                f"messages[{index}] must be {{role: system|user|assistant, content: text}}",
            )
    if messages[0]["role"] == "system":
        # The caller's own system text goes after ours so our prefix stays cacheable.
        system = f"{system}\n{messages.pop(0)['content']}"
    if not messages or messages[-1]["role"] != "user":
        raise EdgeAgentError(ErrorCode.INVALID_REQUEST, "the last message must be from the user")
    return [{"role": "system", "content": system}, *messages]

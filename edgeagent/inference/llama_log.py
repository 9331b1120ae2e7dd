"""llama.cpp's log, read for what it tells: warnings, errors, and buffer sizes.

llama.cpp writes hundreds of info lines per context. We keep its warnings and errors
as log events, and read from its info lines the buffer sizes it allocated: they are
the measured cost of a context the memory governor works with.
"""

from __future__ import annotations

import ctypes
import re

import llama_cpp
import structlog

log = structlog.get_logger("edgeagent.llama_cpp")

# ggml_log_level: 2 = info, 3 = warn, 4 = error.
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


def quiet_llama_cpp() -> None:
    llama_cpp.llama_log_set(_llama_log, ctypes.c_void_p(0))


def forget_buffer_sizes() -> None:
    _last_buffers.clear()


def buffer_sizes() -> tuple[int, int]:
    """(KV cache, compute buffer) bytes llama.cpp reported for the last context made."""
    return _last_buffers.get("kv", 0), _last_buffers.get("compute", 0)


def return_freed_memory() -> None:
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

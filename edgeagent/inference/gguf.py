"""GGUF arithmetic: what one context token costs in KV cache, from the model's metadata.

Pure functions on `Llama.metadata`-style string maps; no model is loaded here.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

# Bytes per stored K/V element by llama.cpp cache type (type_k / type_v): block size over
# elements per block for the quantised ones.
KV_BYTES_PER_ELEMENT: dict[str, Fraction] = {
    "f32": Fraction(4),
    "f16": Fraction(2),
    "bf16": Fraction(2),
    "q8_0": Fraction(34, 32),
    "q5_1": Fraction(24, 32),
    "q5_0": Fraction(22, 32),
    "q4_1": Fraction(20, 32),
    "q4_0": Fraction(18, 32),
    "iq4_nl": Fraction(18, 32),
}


def _meta(metadata: Mapping[str, str], key: str) -> str | None:
    value = metadata.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _meta_ints(metadata: Mapping[str, str], key: str) -> list[int] | None:
    """A scalar ("8") or, for per-layer values, an array ("[8, 8, 4]") as llama.cpp prints it."""
    text = _meta(metadata, key)
    if text is None:
        return None
    try:
        if text.startswith("[") and text.endswith("]"):
            return [int(part) for part in text[1:-1].split(",") if part.strip()]
        return [int(text)]
    except ValueError as exc:
        raise ValueError(f"GGUF metadata {key}={text!r} is not an integer") from exc


def _meta_int(metadata: Mapping[str, str], key: str, *, required: bool) -> int | None:
    values = _meta_ints(metadata, key)
    if values is None:
        if required:
            raise ValueError(f"GGUF metadata lacks {key}")
        return None
    return max(values)


def kv_bytes_per_token(metadata: Mapping[str, str], kv_type: str = "f16") -> int:
    """KV-cache bytes one context token costs, from GGUF metadata (`Llama.metadata`).

    layers x KV heads x (key length + value length) x bytes per element, rounded up.
    Per-layer head counts (arrays) are summed layer by layer. Raises ValueError when the
    metadata lacks what is needed or kv_type is unknown.
    """
    try:
        element = KV_BYTES_PER_ELEMENT[kv_type.lower()]
    except KeyError:
        known = ", ".join(KV_BYTES_PER_ELEMENT)
        raise ValueError(f"unknown KV cache type {kv_type!r} (known: {known})") from None
    arch = _meta(metadata, "general.architecture")
    if arch is None:
        raise ValueError("GGUF metadata lacks general.architecture")
    layers = _meta_int(metadata, f"{arch}.block_count", required=True) or 0
    heads = _meta_ints(metadata, f"{arch}.attention.head_count")
    kv_heads = _meta_ints(metadata, f"{arch}.attention.head_count_kv") or heads
    if kv_heads is None:
        raise ValueError(f"GGUF metadata lacks {arch}.attention.head_count(_kv)")
    if len(kv_heads) == 1:
        kv_heads = kv_heads * layers
    elif len(kv_heads) != layers:
        raise ValueError(
            f"{arch}.attention.head_count_kv has {len(kv_heads)} entries for {layers} layers"
        )

    def head_size(kind: str) -> int:
        explicit = _meta_int(metadata, f"{arch}.attention.{kind}_length", required=False)
        if explicit is not None:
            return explicit
        embedding = _meta_int(metadata, f"{arch}.embedding_length", required=True) or 0
        head_count = max(heads or [0])
        if head_count <= 0:
            raise ValueError(f"GGUF metadata lacks {arch}.attention.{kind}_length and head_count")
        return embedding // head_count

    elements = sum(kv_heads) * (head_size("key") + head_size("value"))
    if elements <= 0:
        raise ValueError(f"GGUF metadata of {arch!r} gives an empty KV cache")
    return math.ceil(elements * element)

"""KV-cache bytes per token from GGUF metadata (real models' metadata, copied)."""

from __future__ import annotations

import pytest

from edgeagent.inference.gguf import kv_bytes_per_token

MiB = 1024 * 1024
KV = 4096  # bytes per token in the governor tests: 256 tokens = 1 MiB

QWEN25_05B = {
    "general.architecture": "qwen2",
    "general.name": "Qwen2.5 0.5B Instruct",
    "qwen2.block_count": "24",
    "qwen2.context_length": "32768",
    "qwen2.embedding_length": "896",
    "qwen2.attention.head_count": "14",
    "qwen2.attention.head_count_kv": "2",
}
SMOLLM2_135M = {
    "general.architecture": "llama",
    "llama.block_count": "30",
    "llama.context_length": "8192",
    "llama.embedding_length": "576",
    "llama.attention.head_count": "9",
    "llama.attention.head_count_kv": "3",
}


# --- KV arithmetic -------------------------------------------------------------------------


def test_kv_bytes_qwen25_05b() -> None:
    assert kv_bytes_per_token(QWEN25_05B) == 12_288
    assert kv_bytes_per_token(QWEN25_05B, "f16") == 12_288
    assert kv_bytes_per_token(QWEN25_05B, "q8_0") == 12_288 // 2 * 34 // 32  # 6528
    assert kv_bytes_per_token(QWEN25_05B, "q4_0") == 12_288 // 2 * 18 // 32  # 3456
    assert kv_bytes_per_token(QWEN25_05B, "F32") == 24_576


def test_kv_bytes_smollm2_135m() -> None:
    # llama: 30 layers x 3 KV heads x (64 + 64) x 2 bytes
    assert kv_bytes_per_token(SMOLLM2_135M) == 23_040


def test_kv_bytes_explicit_key_and_value_length() -> None:
    meta = dict(QWEN25_05B, **{"qwen2.attention.key_length": "128"})
    meta["qwen2.attention.value_length"] = "64"
    assert kv_bytes_per_token(meta) == 24 * 2 * (128 + 64) * 2


def test_kv_bytes_without_head_count_kv_uses_head_count() -> None:
    meta = {k: v for k, v in QWEN25_05B.items() if not k.endswith("head_count_kv")}
    assert kv_bytes_per_token(meta) == 24 * 14 * 128 * 2


def test_kv_bytes_per_layer_head_counts() -> None:
    meta = {
        "general.architecture": "openelm",
        "openelm.block_count": "3",
        "openelm.attention.head_count": "[4, 4, 8]",
        "openelm.attention.head_count_kv": "[1, 2, 2]",
        "openelm.attention.key_length": "64",
        "openelm.attention.value_length": "64",
    }
    assert kv_bytes_per_token(meta) == (1 + 2 + 2) * 128 * 2


def test_kv_bytes_rounds_quantised_sizes_up() -> None:
    meta = {
        "general.architecture": "tiny",
        "tiny.block_count": "1",
        "tiny.attention.head_count": "1",
        "tiny.attention.key_length": "1",
        "tiny.attention.value_length": "1",
    }
    assert kv_bytes_per_token(meta, "q4_0") == 2  # 2 x 18/32 = 1.125


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({}, "general.architecture"),
        ({"general.architecture": "qwen2"}, "qwen2.block_count"),
        (
            {"general.architecture": "x", "x.block_count": "2"},
            r"x.attention.head_count\(_kv\)",
        ),
        (
            {"general.architecture": "x", "x.block_count": "2", "x.attention.head_count": "2"},
            "x.embedding_length",
        ),
        (
            {"general.architecture": "x", "x.block_count": "two"},
            "not an integer",
        ),
        (
            {
                "general.architecture": "x",
                "x.block_count": "3",
                "x.attention.head_count_kv": "[1, 2]",
            },
            "2 entries for 3 layers",
        ),
    ],
)
def test_kv_bytes_bad_metadata(meta: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kv_bytes_per_token(meta)


def test_kv_bytes_unknown_type() -> None:
    with pytest.raises(ValueError, match="unknown KV cache type 'q3_k'"):
        kv_bytes_per_token(QWEN25_05B, "q3_k")

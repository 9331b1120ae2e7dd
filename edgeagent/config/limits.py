"""`[schema_limits]`: how large and intricate a caller's JSON Schema may be.

A schema arrives with every task and is compiled (llguidance) and checked (jsonschema)
before the task runs; these bounds keep that work small whatever a caller sends. Each
exceeded limit is refused with SCHEMA_UNSUPPORTED naming it. The action catalog is the
operator's and is not bound by them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SchemaLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(
        default=32 * 1024,
        ge=256,
        le=16 * 1024 * 1024,
        description="Largest inline `schema`, in bytes of compact JSON.",
    )
    max_depth: int = Field(
        default=32,
        ge=2,
        le=1000,
        description="Deepest nesting of objects and arrays in an inline `schema`.",
    )
    max_enum_items: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Most values in one `enum` of an inline `schema`.",
    )
    max_pattern_length: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Longest `pattern` (or `patternProperties` key), in characters.",
    )

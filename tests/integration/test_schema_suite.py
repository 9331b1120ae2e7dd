"""Supported JSON Schema, measured against the official JSON Schema Test Suite (2020-12).

No model: for every schema group of the suite, the contract either refuses the schema
(SCHEMA_UNSUPPORTED or INVALID_REQUEST) or compiles it; for every compiled one, no
instance the suite marks invalid may pass both layers, the grammar (llguidance over the
instance's compact JSON text) and the final validator. The figures are reported in
docs/engine.md.

The suite's files come from the jsonschema sdist on PyPI (its maintainers vendor the
suite in `json/`), fetched with pip once, sha256-checked, and cached in
~/.cache/edgeagent/json-schema-test-suite/.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.scripted_model import grammar_accepts

from edgeagent.errors import EdgeAgentError, ErrorCode
from edgeagent.inference.contract import schema_spec

SDIST = "jsonschema-4.26.0.tar.gz"
SDIST_SHA256 = "0c26707e2efad8aa1bfc5b7ce170f3fccc2e4918ff85989ba9ffa9facb2be326"
SUITE_PATH = "jsonschema-4.26.0/json/tests/draft2020-12/"
CACHE = Path(
    os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "edgeagent", "json-schema-test-suite"
)
# Measured with this suite version (docs/engine.md); fewer accepted groups is a regression.
ACCEPTED_REQUIRED = 163  # of 368
ACCEPTED_OPTIONAL = 41  # of 70


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_sdist() -> Path:
    sdist = CACHE / SDIST
    if sdist.is_file() and _sha256(sdist) == SDIST_SHA256:
        return sdist
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--dest", tmp, "jsonschema==4.26.0"],
            capture_output=True, text=True, check=False, timeout=600,
        )  # fmt: skip
        downloaded = Path(tmp) / SDIST
        if done.returncode != 0 or not downloaded.is_file():
            pytest.skip(f"cannot download {SDIST} from PyPI: {done.stderr[-500:]}")
        actual = _sha256(downloaded)
        assert actual == SDIST_SHA256, f"{SDIST} has sha256 {actual}, expected {SDIST_SHA256}"
        downloaded.replace(sdist)
    return sdist


@pytest.fixture(scope="module")
def suite_dir() -> Path:
    target = CACHE / "draft2020-12"
    if not (target / "type.json").is_file():
        with tarfile.open(_fetch_sdist()) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(SUITE_PATH)]
            for member in members:
                member.name = member.name[len(SUITE_PATH) :]
            # The archive's sha256 is checked; the "data" filter (Python >= 3.11.4) also
            # refuses links and absolute paths.
            wanted = [m for m in members if m.name]
            if hasattr(tarfile, "data_filter"):
                archive.extractall(target, members=wanted, filter="data")
            else:
                archive.extractall(target, members=wanted)
    return target


@dataclass
class Outcomes:
    groups: dict[str, int] = field(default_factory=lambda: {"required": 0, "optional": 0})
    accepted: dict[str, int] = field(default_factory=lambda: {"required": 0, "optional": 0})
    refused: dict[str, int] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)  # invalid instances past both layers
    errors: list[str] = field(default_factory=list)  # anything but a typed refusal
    valid: int = 0  # valid instances of accepted schemas
    valid_passing: int = 0  # ... that pass both layers (the rest: narrower than needed)


def _check_group(group: dict[str, Any], where: str, out: Outcomes, kind: str) -> None:
    try:
        spec = schema_spec(group["schema"])
    except EdgeAgentError as exc:
        if exc.code not in {ErrorCode.SCHEMA_UNSUPPORTED, ErrorCode.INVALID_REQUEST}:
            out.errors.append(f"{where}: {exc}")
        out.refused[str(exc.code)] = out.refused.get(str(exc.code), 0) + 1
        return
    out.accepted[kind] += 1
    for test in group["tests"]:
        text = json.dumps(test["data"], separators=(",", ":"), ensure_ascii=False)
        try:
            spec.validate(test["data"])
            validated = True
        except EdgeAgentError:
            validated = False
        passes = validated and grammar_accepts(spec.grammar, text)
        if test["valid"]:
            out.valid += 1
            out.valid_passing += passes
        elif passes:
            out.leaks.append(f"{where} / {test['description']}: {text[:80]}")


@pytest.fixture(scope="module")
def outcomes(suite_dir: Path) -> Outcomes:
    out = Outcomes()
    for path in sorted(suite_dir.rglob("*.json")):
        relative = path.relative_to(suite_dir).as_posix()
        kind = "optional" if relative.startswith("optional/") else "required"
        for group in json.loads(path.read_text(encoding="utf-8")):
            out.groups[kind] += 1
            where = f"{relative}: {group['description']}"
            try:
                _check_group(group, where, out, kind)
            except Exception as exc:  # every crash is collected and reported
                out.errors.append(f"{where}: {type(exc).__name__}: {exc}")
    return out


def test_every_schema_is_refused_with_a_code_or_compiled(outcomes: Outcomes) -> None:
    assert outcomes.errors == []


def test_no_invalid_instance_passes_both_layers(outcomes: Outcomes) -> None:
    assert outcomes.leaks == []


def test_supported_share_of_the_suite(outcomes: Outcomes, record_property: Any) -> None:
    figures = {
        "groups": outcomes.groups,
        "accepted": outcomes.accepted,
        "refused": outcomes.refused,
        "valid_instances_passing": f"{outcomes.valid_passing}/{outcomes.valid}",
    }
    print(f"\nJSON Schema Test Suite (draft 2020-12): {figures}")
    record_property("schema_suite", json.dumps(figures))
    assert outcomes.groups == {"required": 368, "optional": 70}  # the pinned suite
    assert outcomes.accepted["required"] >= ACCEPTED_REQUIRED
    assert outcomes.accepted["optional"] >= ACCEPTED_OPTIONAL

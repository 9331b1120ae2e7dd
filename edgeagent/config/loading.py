"""Loading a config file: TOML, then EDGEAGENT_<SECTION>__<KEY> overrides, then validation.

`load_config` is the only entry point; `format_validation_error` turns pydantic's
errors into "where: why" lines for `edgeagent validate-config`.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgeagent.config.document import Config
from edgeagent.errors import EdgeAgentError, ErrorCode

DEFAULT_CONFIG_PATH = Path("/etc/edgeagent/config.toml")
ENV_PREFIX = "EDGEAGENT_"


def _env_overrides(environ: dict[str, str] | os._Environ[str]) -> dict[str, dict[str, Any]]:
    """EDGEAGENT_MQTT__PORT=1884 -> {"mqtt": {"port": "1884"}}; JSON values are decoded."""
    sections: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        try:
            value: Any = json.loads(raw)
            # Only structured values are taken as JSON: "007" must stay a string id.
            if not isinstance(value, (list, dict, bool)) and value is not None:
                value = raw
        except json.JSONDecodeError:
            value = raw
        sections.setdefault(section, {})[key] = value
    return sections


def _resolve_schema_paths(data: dict[str, Any], base: Path) -> None:
    """An action's `schema` may be a path (relative to the config file) to a JSON file."""
    for index, action in enumerate(data.get("actions") or []):
        if not isinstance(action, dict) or not isinstance(action.get("schema"), str):
            continue
        path = Path(action["schema"])
        path = path if path.is_absolute() else base / path
        try:
            action["schema"] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or not JSON
            raise EdgeAgentError(
                ErrorCode.CONFIG_INVALID, f"actions[{index}].schema: cannot read {path}: {exc}"
            ) from exc


def load_config(
    path: Path | str, environ: dict[str, str] | os._Environ[str] | None = None
) -> Config:
    """Read, overlay the environment and validate. Raises EdgeAgentError(CONFIG_INVALID)."""
    path = Path(path)
    try:
        return _load(path, os.environ if environ is None else environ)
    except (ValueError, TypeError, RecursionError) as exc:
        # Whatever the file holds, a bad config is CONFIG_INVALID: `run` exits 2 (systemd
        # does not restart into it) and a reload keeps the running config.
        raise EdgeAgentError(
            ErrorCode.CONFIG_INVALID, f"{path}: {type(exc).__name__}: {exc}"
        ) from exc


def _load(path: Path, environ: dict[str, str] | os._Environ[str]) -> Config:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EdgeAgentError(ErrorCode.CONFIG_INVALID, f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise EdgeAgentError(ErrorCode.CONFIG_INVALID, f"{path}: not UTF-8: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise EdgeAgentError(ErrorCode.CONFIG_INVALID, f"{path}: TOML syntax: {exc}") from exc
    for section, values in _env_overrides(environ).items():
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise EdgeAgentError(
                ErrorCode.CONFIG_INVALID, f"{section}: environment override of a non-table"
            )
        target.update(values)
    _resolve_schema_paths(data, path.parent)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise EdgeAgentError(ErrorCode.CONFIG_INVALID, format_validation_error(exc, path)) from exc


def format_validation_error(exc: ValidationError, path: Path) -> str:
    lines = [f"{path}: {exc.error_count()} invalid setting(s)"]
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)

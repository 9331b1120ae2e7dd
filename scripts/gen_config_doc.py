#!/usr/bin/env python3
"""Render docs/configuration.md from the pydantic config models (the single source).

    python scripts/gen_config_doc.py > docs/configuration.md

tests/test_config.py fails when the committed file is out of date.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from edgeagent.config import Config

HEADER = """# Configuration

One TOML file, by default `/etc/edgeagent/config.toml` (an annotated example:
[`examples/config.toml`](../examples/config.toml)). Check a file before using it:

```sh
edgeagent validate-config /etc/edgeagent/config.toml   # exit 0 = valid, else prints key: reason
```

Every key can be overridden by an environment variable `EDGEAGENT_<SECTION>__<KEY>`,
e.g. `EDGEAGENT_MQTT__PORT=8883` or `EDGEAGENT_MODEL__PATH=/models/x.gguf` (values are
taken as strings and converted; `true`/`false`, lists and tables may be given as JSON).
Unknown sections or keys, in the file or the environment, are errors.

The broker password is never in this file: `[mqtt] password_file`, or by default the
systemd credential `mqtt_password` (`$CREDENTIALS_DIRECTORY/mqtt_password`, provided by
`LoadCredential=` in the unit).

By fleet size: the defaults suit a few dozen devices on one broker. What to change for a
larger fleet (measured with `edgeagent bench --fleet N`, [scale.md](scale.md)):

| setting | ~10 devices | ~100 devices | ~1,000 devices |
|---|---|---|---|
| `[mqtt] heartbeat_s` | `10` (default) | `30` | `60` |
| `[mqtt] reconnect_base_s` | `1` (default) | `2` | `5` |
| `[mqtt] reconnect_max_s` | `30` (default) | `60` | `120` |
| `[homeassistant] republish` | `changed` (default) | `changed` | `changed` |

This page is generated from the code (`scripts/gen_config_doc.py`).
"""


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return f"`{field.default!s}`" if field.default is not None else "unset"
    if field.default_factory is not None:
        return "computed"
    return "**required**"


def _section(name: str, model: type[BaseModel]) -> list[str]:
    lines = [f"\n## `[{name}]`\n", "| key | default | meaning |", "|---|---|---|"]
    for key, field in model.model_fields.items():
        key_name = field.alias or key
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{key_name}` | {_default(field)} | {description} |")
    return lines


def render() -> str:
    out = [HEADER]
    for name, field in Config.model_fields.items():
        annotation = field.annotation
        if name == "actions":
            from edgeagent.config import ActionConfig  # noqa: PLC0415

            out.extend(_section("[actions]]", ActionConfig))
            out.append(
                "\nEach `[[actions]]` entry is one action the model may choose. `schema` is the "
                "JSON Schema of its arguments, as an inline table or a path to a JSON file "
                "(relative to the config file). Unsupported schema features are refused at "
                "start (see [engine.md](engine.md))."
            )
            continue
        assert isinstance(annotation, type)
        assert issubclass(annotation, BaseModel)
        out.extend(_section(name, annotation))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())

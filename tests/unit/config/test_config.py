from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeagent.config import load_config
from edgeagent.errors import EdgeAgentError, ErrorCode

ROOT = Path(__file__).resolve().parents[3]

MINIMAL = """
[model]
path = "/models/m.gguf"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_has_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), environ={})
    assert cfg.mqtt.port == 1883
    assert cfg.mqtt.topic_prefix == "edgeagent"
    assert cfg.state.dir == Path("/var/lib/edgeagent")
    assert cfg.actions == []


def test_reply_policy_from_config(tmp_path):
    text = MINIMAL + '[device]\nid = "gh1"\n[mqtt]\nreply_prefixes = ["replies", "home/ea"]\n'
    policy = load_config(write(tmp_path, text), environ={}).reply_policy()
    assert policy.fleet_prefix == "edgeagent"
    assert policy.device == "gh1"
    assert policy.allowed_prefixes == ("replies", "home/ea")
    assert policy.refusal("home/ea/x") is None
    assert policy.refusal("edgeagent/gh1/actions/x") is not None
    default = load_config(write(tmp_path, MINIMAL), environ={}).reply_policy()
    assert default.allowed_prefixes == ("replies",)
    assert default.max_bytes == 256


def test_example_config_is_valid():
    cfg = load_config(ROOT / "examples" / "config.toml", environ={})
    assert [a.name for a in cfg.actions] == ["set_irrigation", "notify", "no_action"]
    assert cfg.action("set_irrigation").dispatch is True


def test_environment_overrides_nested_keys(tmp_path):
    env = {
        "EDGEAGENT_MQTT__PORT": "8883",
        "EDGEAGENT_MODEL__PATH": "/other.gguf",
        "EDGEAGENT_DEVICE__ID": "007",
    }
    cfg = load_config(write(tmp_path, MINIMAL), environ=env)
    assert cfg.mqtt.port == 8883
    assert cfg.model.path == Path("/other.gguf")
    assert cfg.device.id == "007"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (MINIMAL + "[mqtt]\nprot = 1\n", "mqtt.prot"),
        (MINIMAL + "[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[model]\nthreads = 2\n", "model.path"),
        (MINIMAL + '[device]\nid = "a/b"\n', "device.id"),
        # The fleet's own branches: a device "fleet" would take every fleet task as its own.
        (MINIMAL + '[device]\nid = "fleet"\n', "device.id"),
        (MINIMAL + '[device]\nid = "clients"\n', "device.id"),
        (MINIMAL + '[mqtt]\ntls_cert = "/c"\n', "mqtt"),
        (MINIMAL + '[[actions]]\nname = "x"\ndescription = "d"\n', "actions.0.schema"),
        (MINIMAL + "[model]\n", "TOML syntax"),
        (MINIMAL + '[mqtt]\nreply_prefixes = ["replies/#"]\n', "mqtt.reply_prefixes"),
        (MINIMAL + '[mqtt]\nreply_prefixes = ["$SYS"]\n', "mqtt.reply_prefixes"),
        (MINIMAL + '[mqtt]\nreply_prefixes = [""]\n', "mqtt.reply_prefixes"),
        (MINIMAL + '[mqtt]\nreply_prefixes = ["replies/"]\n', "mqtt.reply_prefixes"),
        (MINIMAL + "[mqtt]\nreply_topic_max_bytes = 70000\n", "mqtt.reply_topic_max_bytes"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, where):
    with pytest.raises(EdgeAgentError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.code is ErrorCode.CONFIG_INVALID
    assert where in info.value.message


def test_unknown_env_key_is_an_error(tmp_path):
    with pytest.raises(EdgeAgentError, match=r"mqtt\.prot"):
        load_config(write(tmp_path, MINIMAL), environ={"EDGEAGENT_MQTT__PROT": "1"})


def test_duplicate_action_names(tmp_path):
    action = '[[actions]]\nname = "a"\ndescription = "d"\nschema = { type = "object" }\n'
    with pytest.raises(EdgeAgentError, match="defined twice"):
        load_config(write(tmp_path, MINIMAL + action + action), environ={})


def test_action_schema_from_file(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "vent.json").write_text(
        json.dumps({"type": "object", "properties": {"open": {"type": "boolean"}}})
    )
    text = MINIMAL + '[[actions]]\nname = "vent"\ndescription = "d"\nschema = "schemas/vent.json"\n'
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.actions[0].schema_["properties"]["open"] == {"type": "boolean"}


def test_password_from_systemd_credential(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = load_config(write(tmp_path, MINIMAL + '[mqtt]\nusername = "u"\n'), environ={})
    assert cfg.mqtt.password() == "s3cret"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeagent", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_validate_config_cli(tmp_path):
    ok = run_cli("validate-config", str(ROOT / "examples" / "config.toml"))
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("validate-config", str(write(tmp_path, MINIMAL + "[queue]\nsize = 0\n")))
    assert bad.returncode == 2
    assert "queue.size" in bad.stderr
    assert "greater than or equal to 1" in bad.stderr


def test_configuration_doc_is_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_config_doc import render  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: python scripts/gen_config_doc.py > docs/configuration.md"
    )


# -- the catalog fields (when, examples, nothing_to_do) ------------------------------------------------------

CATALOG = """
[catalog]
min_confidence = 0.8

[[actions]]
name = "water"
description = "Water a zone."
dispatch = true
when = "a zone is dry or someone asks"
schema = { type = "object", properties = { zone = { type = "integer", minimum = 1 } }, required = ["zone"] }
examples = ["Zone 2 is dry.", { input = "Water zone 3.", args = { zone = 3 } }]

[[actions]]
name = "alarm"
description = "Sound the alarm."
min_confidence = 0.95
schema = { type = "object", properties = {} }

[[actions]]
name = "idle"
description = "Nothing to do."
nothing_to_do = true
schema = { type = "object", properties = {} }
"""


def test_catalog_fields(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + CATALOG), environ={})
    water, alarm, idle = cfg.actions
    assert water.when == "a zone is dry or someone asks"
    assert water.example_texts() == [("Zone 2 is dry.", None), ("Water zone 3.", {"zone": 3})]
    assert idle.nothing_to_do
    assert not water.nothing_to_do
    assert cfg.model.reason is False
    # The action's own floor, else the catalog's; never one for "nothing to do".
    assert cfg.min_confidence(water) == 0.8
    assert cfg.min_confidence(alarm) == 0.95
    assert cfg.min_confidence(idle) is None


def test_no_floor_by_default(tmp_path):
    text = MINIMAL + CATALOG.replace("[catalog]\nmin_confidence = 0.8\n", "")
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.min_confidence(cfg.actions[0]) is None


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (("min_confidence = 0.95", "min_confidence = 1.5"), "min_confidence"),
        (("min_confidence = 0.8", "min_confidence = -0.1"), "min_confidence"),
        (("args = { zone = 3 }", "args = { zone = 0 }"), "examples[1].args"),
        (("args = { zone = 3 }", "args = { zone = 3, minutes = 5 }"), "examples[1].args"),
        (('examples = ["Zone 2 is dry.", ', 'examples = [{ text = "x" }, '), "examples"),
        (('when = "a zone is dry or someone asks"', 'when = ""'), "when"),
        (('name = "alarm"', 'name = "alarm"\nnothing_to_do = true'), "at most one"),
    ],
)
def test_catalog_field_errors(tmp_path, change, where):
    text = MINIMAL + CATALOG.replace(*change)
    with pytest.raises(EdgeAgentError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.code is ErrorCode.CONFIG_INVALID
    assert where in info.value.message


def test_examples_are_bounded(tmp_path):
    many = ", ".join(f'"example {i}"' for i in range(9))
    text = MINIMAL + CATALOG.replace(
        'examples = ["Zone 2 is dry.", { input = "Water zone 3.", args = { zone = 3 } }]',
        f"examples = [{many}]",
    )
    with pytest.raises(EdgeAgentError, match="examples"):
        load_config(write(tmp_path, text), environ={})


def test_model_reason(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "reason = true\n"), environ={})
    assert cfg.model.reason is True


@pytest.mark.parametrize(
    ("content", "schema_file", "where"),
    [
        pytest.param(b'[device]\nid = "caf\xe9"\n', None, "not UTF-8", id="config not UTF-8"),
        pytest.param(
            MINIMAL.encode() + b'[[actions]]\nname = "v"\ndescription = "d"\nschema = "s.json"\n',
            b'{"title": "caf\xe9"}',
            "actions[0].schema",
            id="schema file not UTF-8",
        ),
        pytest.param(
            b"actions = 5\n" + MINIMAL.encode(), None, "TypeError", id="actions not a list"
        ),
    ],
)
def test_every_unreadable_config_is_config_invalid(tmp_path, content, schema_file, where):
    """Not a ValueError or TypeError escaping: `run` exits 2 on CONFIG_INVALID and a
    reload keeps the running config."""
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    if schema_file is not None:
        (tmp_path / "s.json").write_bytes(schema_file)
    with pytest.raises(EdgeAgentError, match=re.escape(where)) as info:
        load_config(path, environ={})
    assert info.value.code is ErrorCode.CONFIG_INVALID

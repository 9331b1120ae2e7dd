# Copyright 2026 The edgeagent authors
# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import inspect
import io
import json
import logging
import os
import select
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog
from structlog.testing import capture_logs

from edgeagent.errors import ErrorCode
from edgeagent.service.system.journald import (
    JournaldLoggerFactory,
    encode_journal,
    journal_field_name,
    journal_message,
    journal_priority,
)
from edgeagent.service.system.logsetup import _StdlibToStructlog, configure_logging, resolve_format
from edgeagent.service.system.redaction import redact_sensitive

if TYPE_CHECKING:
    from collections.abc import Iterator


def decode_journal(data: bytes) -> list[tuple[str, str]]:
    """journald's native protocol, read independently of the encoder."""
    fields = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        line = data[pos:newline]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = newline + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[newline + 1 : newline + 9])
            value = data[newline + 9 : newline + 9 + size]
            assert data[newline + 9 + size : newline + 10 + size] == b"\n"
            pos = newline + 10 + size
        fields.append((name.decode("ascii"), value.decode("utf-8")))
    return fields


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    factory = structlog.get_config()["logger_factory"]
    if isinstance(factory, JournaldLoggerFactory):
        factory.logger.close()
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibToStructlog):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "journal.socket")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    fields = decode_journal(sock.recv(1 << 20))
    names = [name for name, _ in fields]
    assert len(names) == len(set(names)), names
    return dict(fields)


def nothing_queued(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


# -- encoding -----------------------------------------------------------------


def test_encode_plain_and_binary_safe_values():
    assert (
        encode_journal([("MESSAGE", "hello"), ("PRIORITY", "6")]) == b"MESSAGE=hello\nPRIORITY=6\n"
    )
    assert encode_journal([("EXCEPTION", "line 1\nline 2")]) == (
        b"EXCEPTION\n" + (13).to_bytes(8, "little") + b"line 1\nline 2\n"
    )
    # the length counts UTF-8 bytes, not characters
    assert (
        encode_journal([("X", "é\n")])
        == b"X\n" + (3).to_bytes(8, "little") + "é\n".encode() + b"\n"
    )


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("task_id", "TASK_ID"),
        ("error-code", "ERROR_CODE"),
        ("_private", "PRIVATE"),
        ("priority", "EA_PRIORITY"),
        ("message", "EA_MESSAGE"),
        ("9lives", "F_9LIVES"),
        ("ü", None),
        ("", None),
        ("k" * 100, "K" * 64),
    ],
)
def test_journal_field_names(key, name):
    assert journal_field_name(key) == name


@pytest.mark.parametrize(
    ("level", "priority"),
    [("critical", 2), ("error", 3), ("exception", 3), ("warning", 4), ("warn", 4),
     ("info", 6), ("debug", 7), ("INFO", 6), ("bogus", 6)],
)  # fmt: skip
def test_priorities(level, priority):
    assert journal_priority(level) == priority


def test_message_is_one_short_line():
    message = journal_message(
        {"event": "task done", "level": "info", "device_id": "pi", "task_id": "t1", "note": "a b"}
    )
    assert message == 'task done task_id=t1 note="a b"'
    long = journal_message(
        {"event": "x", "blob": "y" * 1000, "more": "z\nz", "n": list(range(500))}
    )
    assert "\n" not in long
    assert len(long) <= 300
    assert "more=z\\nz" in long


# -- journald, through configure_logging ---------------------------------------


def test_journal_fields_and_priority(journal):
    sock, path = journal
    assert configure_logging("info", "journal", "pi-7", journal_socket=path) == "journal"
    log = structlog.get_logger("edgeagent.test")
    log.info(
        "task finished",
        task_id="abc",
        action="classify",
        error_code=ErrorCode.BUSY,
        tokens=12,
        ok=True,
        details={"a": [1, 2]},
    )
    fields = receive(sock)
    assert fields == {
        "MESSAGE": (
            "task finished task_id=abc action=classify error_code=BUSY tokens=12 ok=true "
            'details={"a":[1,2]}'
        ),
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "edgeagent",
        "EVENT": "task finished",
        "TASK_ID": "abc",
        "ACTION": "classify",
        "ERROR_CODE": "BUSY",
        "TOKENS": "12",
        "OK": "true",
        "DETAILS": '{"a":[1,2]}',
        "DEVICE_ID": "pi-7",
    }

    log.debug("not at info level")
    log.warning("slow", task_id="abc")
    assert receive(sock)["PRIORITY"] == "4"
    log.error("failed", error_code="INTERNAL")
    assert receive(sock)["PRIORITY"] == "3"
    log.critical("dying")
    assert receive(sock)["PRIORITY"] == "2"
    assert nothing_queued(sock)


def test_journal_exception_is_binary_encoded(journal):
    sock, path = journal
    configure_logging("debug", "journal", "pi", journal_socket=path)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger().exception("task crashed", task_id="t9")
    fields = receive(sock)
    assert fields["PRIORITY"] == "3"
    assert fields["MESSAGE"] == "task crashed task_id=t9 (ValueError: boom)"
    assert fields["EXCEPTION"].startswith("Traceback (most recent call last):\n")
    assert fields["EXCEPTION"].endswith("ValueError: boom")


def test_journal_redaction_by_level(journal):
    sock, path = journal
    configure_logging("debug", "journal", "pi", journal_socket=path)
    log = structlog.get_logger()
    log.info("task", task_id="t", prompt="tell me everything", password="hunter2", input="xy")
    fields = receive(sock)
    assert fields["PROMPT"] == "[REDACTED 18 chars]"
    assert fields["INPUT"] == "[REDACTED 2 chars]"
    assert fields["PASSWORD"] == "[REDACTED]"
    assert "hunter2" not in fields["MESSAGE"]
    assert "everything" not in fields["MESSAGE"]

    log.debug("task", prompt="tell me everything", token_value="tok", secret="s")
    fields = receive(sock)
    assert fields["PROMPT"] == "tell me everything"  # full prompts only at debug
    assert fields["TOKEN_VALUE"] == "[REDACTED]"  # secrets never
    assert fields["SECRET"] == "[REDACTED]"


def test_journal_large_entry_goes_through_a_sealed_memfd(journal):
    sock, path = journal
    configure_logging("debug", "journal", "pi", journal_socket=path)
    prompt = "word " * 100_000  # 500 kB: larger than any AF_UNIX datagram
    structlog.get_logger().debug("prompt built", task_id="big", prompt=prompt)
    data, fds, _, _ = socket.recv_fds(sock, 1024, 1)
    assert data == b""
    assert len(fds) == 1
    with os.fdopen(fds[0], "rb") as memfd:
        memfd.seek(0)  # journald maps the file; the shared offset is at its end
        fields = dict(decode_journal(memfd.read()))
    assert fields["TASK_ID"] == "big"
    assert fields["PROMPT"] == prompt
    assert fields["PRIORITY"] == "7"


def test_missing_journal_socket_falls_back_to_json(tmp_path):
    stream = io.StringIO()
    missing = str(tmp_path / "no.socket")
    chosen = configure_logging("info", "journal", "pi", journal_socket=missing, stream=stream)
    assert chosen == "json"
    structlog.get_logger().info("hello", task_id="t")
    warning, hello = (json.loads(line) for line in stream.getvalue().splitlines())
    assert warning["event"] == "journal socket missing; logging JSON to stderr"
    assert warning["socket"] == missing
    assert warning["level"] == "warning"
    assert hello["event"] == "hello"
    assert hello["task_id"] == "t"


def test_journal_send_failure_falls_back_to_json(journal):
    sock, path = journal
    stream = io.StringIO()
    configure_logging("info", "journal", "pi", journal_socket=path, stream=stream)
    sock.close()
    Path(path).unlink()  # journald went away
    log = structlog.get_logger()
    log.info("one", task_id="a", password="p")
    log.info("two", task_id="b")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "journal socket send failed; writing JSON to stderr",
        "one",
        "two",
    ]
    assert lines[1]["password"] == "[REDACTED]"
    assert lines[1]["device_id"] == "pi"


# -- format selection ------------------------------------------------------------


def test_auto_picks_journal_only_for_the_journal_stream(journal, tmp_path):
    _, path = journal
    with (tmp_path / "stderr").open("w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert resolve_format("auto", stream=stream, environ=env, journal_socket=path) == "journal"
        # inherited variable, but stderr was redirected elsewhere: not the journal
        other = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
        assert resolve_format("auto", stream=stream, environ=other, journal_socket=path) == "json"
        assert resolve_format("auto", stream=stream, environ={}, journal_socket=path) == "json"
        missing = str(tmp_path / "none")
        assert resolve_format("auto", stream=stream, environ=env, journal_socket=missing) == "json"
        configure_logging("info", "auto", "pi", stream=stream, environ=env, journal_socket=missing)
    line = json.loads((tmp_path / "stderr").read_text())
    assert line["event"] == "journal socket missing; logging JSON to stderr"


def test_auto_console_on_a_tty():
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w") as tty:
            assert resolve_format("auto", stream=tty, environ={}) == "console"
            assert resolve_format("json", stream=tty, environ={}) == "json"
    finally:
        os.close(leader)
    assert resolve_format("console", stream=io.StringIO(), environ={}) == "console"
    with pytest.raises(ValueError, match="unknown log format"):
        resolve_format("xml")


def test_json_lines():
    stream = io.StringIO()
    assert configure_logging("info", "json", "pi-3", stream=stream, environ={}) == "json"
    log = structlog.get_logger()
    log.debug("hidden")
    log.info("task done", task_id="t1", prompt="p" * 50, error_code=ErrorCode.TIMEOUT)
    (line,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert line["event"] == "task done"
    assert line["level"] == "info"
    assert line["device_id"] == "pi-3"
    assert line["task_id"] == "t1"
    assert line["error_code"] == "TIMEOUT"
    assert line["prompt"] == "[REDACTED 50 chars]"
    assert line["timestamp"].endswith("Z")


def test_console():
    stream = io.StringIO()
    assert configure_logging("debug", "console", "pi", stream=stream, environ={}) == "console"
    structlog.get_logger().info("hello console", task_id="t1", password="hunter2")
    out = stream.getvalue()
    assert "hello console" in out
    assert "task_id" in out
    assert "hunter2" not in out
    assert "\x1b[" not in out  # no colours when not a TTY


def test_bad_level():
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("loud", "json", "pi", stream=io.StringIO())


def test_stdlib_logging_is_routed_through_structlog():
    stream = io.StringIO()
    configure_logging("info", "json", "pi", stream=stream, environ={})
    configure_logging("info", "json", "pi", stream=stream, environ={})  # no duplicate handler
    logging.getLogger("paho.mqtt.client").warning("reconnect in %d s", 5)
    logging.getLogger("paho.mqtt.client").debug("below the level")
    (line,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert line["event"] == "reconnect in 5 s"
    assert line["logger"] == "paho.mqtt.client"
    assert line["level"] == "warning"


# -- redaction processor ------------------------------------------------------------


def test_redact_nested_and_case_insensitive():
    event = {
        "event": "e",
        "Password": "p",
        "request": {"input": "long text", "meta": {"secret": 1, "ok": 2}},
        "items": [{"prompt": "x"}, "keep"],
        "task_id": "t",
    }
    original_request = event["request"]
    out = redact_sensitive(None, "info", event)
    assert out == {
        "event": "e",
        "Password": "[REDACTED]",
        "request": {"input": "[REDACTED 9 chars]", "meta": {"secret": "[REDACTED]", "ok": 2}},
        "items": [{"prompt": "[REDACTED 1 chars]"}, "keep"],
        "task_id": "t",
    }
    assert original_request == {"input": "long text", "meta": {"secret": 1, "ok": 2}}  # not mutated

    debug = redact_sensitive(None, "debug", {"prompt": "x", "nested": {"password": "p"}})
    assert debug == {"prompt": "x", "nested": {"password": "[REDACTED]"}}


@pytest.mark.skipif(
    "processors" not in inspect.signature(capture_logs).parameters,
    reason="capture_logs(processors=) needs structlog >= 25.5",
)
def test_redaction_with_capture_logs():
    with capture_logs(processors=[redact_sensitive]) as logs:
        structlog.get_logger().info("task", prompt="secret prompt", task_id="t")
        structlog.get_logger().debug("task", prompt="secret prompt")
    assert logs[0]["prompt"] == "[REDACTED 13 chars]"
    assert logs[1]["prompt"] == "secret prompt"


def test_lines_logged_while_llama_cpp_silences_stderr_still_arrive():
    """llama-cpp-python points descriptors 1 and 2 at /dev/null while it creates a model
    or a context; the daemon stays connected meanwhile (the model loads while the MQTT
    link runs), and what other threads log then must not vanish."""
    import subprocess  # noqa: PLC0415 - only here
    import sys  # noqa: PLC0415 - only here

    script = (
        "from llama_cpp._utils import suppress_stdout_stderr\n"
        "import structlog\n"
        "from edgeagent.service.system.logsetup import configure_logging\n"
        "configure_logging('info', 'json', 'd')\n"
        "with suppress_stdout_stderr(disable=False):\n"
        "    structlog.get_logger().info('while the model loads')\n"
        "structlog.get_logger().info('after')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()]
    assert events == ["while the model loads", "after"]

"""The role's resumable model download (ansible/roles/edgeagent/files/model_fetch.py),
run as the hosts run it (a python3 process) against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.range_http import RangeServer, Served

SCRIPT = Path(__file__).parents[3] / "ansible" / "roles" / "edgeagent" / "files" / "model_fetch.py"
MODEL = os.urandom(3 * (1 << 20) + 12345)  # a few chunks, not a whole number of them
SHA256 = hashlib.sha256(MODEL).hexdigest()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[RangeServer]:
    www = tmp_path / "www"
    www.mkdir()
    (www / "m.gguf").write_bytes(MODEL)
    server = RangeServer(www)
    yield server
    server.close()


def fetch(mirror: RangeServer, dest: Path, sha256: str = SHA256) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), f"{mirror.url}/m.gguf", str(dest), sha256, "60"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_fresh_download_is_verified_and_renamed(mirror, tmp_path):
    dest = tmp_path / "m.gguf"
    done = fetch(mirror, dest)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "resumed_from": 0,
        "received": len(MODEL),
        "restarted": False,
    }
    assert dest.read_bytes() == MODEL
    assert not (tmp_path / "m.gguf.part").exists()
    assert oct(dest.stat().st_mode & 0o777) == "0o640"
    assert mirror.log == [Served("/m.gguf", None, 200, len(MODEL))]


def test_an_interrupted_download_continues_where_it_stopped(mirror, tmp_path):
    dest = tmp_path / "m.gguf"
    mirror.cut_after = 1_500_000
    first = fetch(mirror, dest)
    assert first.returncode == 1
    assert "model download failed" in first.stderr
    assert not dest.exists()
    kept = (tmp_path / "m.gguf.part").stat().st_size
    assert 0 < kept <= 1_500_000
    mirror.cut_after = None
    second = fetch(mirror, dest)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result == {"resumed_from": kept, "received": len(MODEL) - kept, "restarted": False}
    assert dest.read_bytes() == MODEL
    assert mirror.log[-1] == Served("/m.gguf", f"bytes={kept}-", 206, len(MODEL) - kept)


def test_a_complete_part_is_only_verified(mirror, tmp_path):
    (tmp_path / "m.gguf.part").write_bytes(MODEL)
    done = fetch(mirror, tmp_path / "m.gguf")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["received"] == 0
    assert [s.status for s in mirror.log] == [416]
    assert (tmp_path / "m.gguf").read_bytes() == MODEL


def test_a_server_without_ranges_sends_the_whole_file_again(mirror, tmp_path):
    (tmp_path / "m.gguf.part").write_bytes(MODEL[:1000])
    mirror.ranges = False
    done = fetch(mirror, tmp_path / "m.gguf")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "resumed_from": 0,
        "received": len(MODEL),
        "restarted": False,
    }
    assert (tmp_path / "m.gguf").read_bytes() == MODEL


def test_a_part_of_another_file_is_dropped_and_downloaded_again(mirror, tmp_path):
    (tmp_path / "m.gguf.part").write_bytes(b"x" * 1000)  # the start of an older version
    done = fetch(mirror, tmp_path / "m.gguf")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "resumed_from": 1000,
        "received": len(MODEL),
        "restarted": True,
    }
    assert (tmp_path / "m.gguf").read_bytes() == MODEL


def test_a_wrong_checksum_installs_nothing(mirror, tmp_path):
    done = fetch(mirror, tmp_path / "m.gguf", sha256="0" * 64)
    assert done.returncode == 1
    assert "does not have sha256" in done.stderr
    assert list(tmp_path.glob("m.gguf*")) == []


def test_a_missing_file_fails_with_the_status(mirror, tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), f"{mirror.url}/nope.gguf", str(tmp_path / "m"), SHA256, "9"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "HTTP 404" in done.stderr

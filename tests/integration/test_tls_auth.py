"""TLS with a client certificate and a username/password read from a file (or the
systemd credential), against a real mosquitto that requires all three."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, write_config
from support.mosquitto import Mosquitto

pytestmark = [pytest.mark.model, pytest.mark.mqtt]

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("openssl or mosquitto_passwd not installed")
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for name, cn in (("server", "localhost"), ("client", "edgeagent-dev1")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            if name == "server"
            else "extendedKeyUsage=clientAuth\n"
        )
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)  # fmt: skip
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "edgeagent", "s3cret pass"], check=True
    )
    return d


def test_tls_client_certificate_and_password(tmp_path, pki, model_path):
    broker = Mosquitto(
        tmp_path / "broker",
        users={"edgeagent": "s3cret pass"},
        listener_options=(
            f"cafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
            "require_certificate true\n"
        ),
        persistence=False,
    )
    broker.start()
    port = broker.port
    # The password arrives the way systemd's LoadCredential= delivers it.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("s3cret pass\n")
    cfg = write_config(
        tmp_path / "config.toml",
        model=model_path,
        port=port,
        sections={
            "mqtt": {
                "host": "localhost",
                "username": "edgeagent",
                "tls_ca": pki / "ca.crt",
                "tls_cert": pki / "client.crt",
                "tls_key": pki / "client.key",
            }
        },
    )
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log", env={"CREDENTIALS_DIRECTORY": str(creds)})
    try:
        daemon.start()
        daemon.wait_event("mqtt connected")
        # mosquitto_rr over TLS with the same client certificate and password.
        done = subprocess.run(
            ["mosquitto_rr", "-V", "5", "-h", "localhost", "-p", str(port), "--cafile", str(pki / "ca.crt"),
             "--cert", str(pki / "client.crt"), "--key", str(pki / "client.key"), "-u", "edgeagent", "-P", "s3cret pass",
             "-t", "edgeagent/dev1/tasks", "-e", "replies/tls", "-W", "60",
             "-m", json.dumps({"input": "Is 20 C fine for basil?", "schema": SCHEMA})],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "ok"
        # The password must not appear in the log.
        assert "s3cret" not in daemon.log()
    finally:
        daemon.stop()
        broker.stop()


def test_wrong_password_is_refused_and_retried(tmp_path, pki, model_path):
    broker = Mosquitto(tmp_path / "broker", users={"edgeagent": "s3cret pass"}, persistence=False)
    broker.start()
    port = broker.port
    secret = tmp_path / "password"
    secret.write_text("wrong")
    cfg = write_config(
        tmp_path / "config.toml",
        model=model_path,
        port=port,
        sections={"mqtt": {"username": "edgeagent", "password_file": secret}},
    )
    daemon = DaemonProcess(cfg, tmp_path / "daemon.log")
    try:
        daemon.start()
        daemon.wait_event("mqtt connect refused")
        assert daemon.proc is not None
        assert daemon.proc.poll() is None  # keeps running and retrying, as after a broker outage
    finally:
        daemon.stop()
        broker.stop()

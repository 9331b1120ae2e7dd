# ruff: noqa: INP001 - an Ansible filter plugin, loaded by Ansible from this directory
"""Jinja filters for the broker side of the role (tasks/broker.yml).

``mosquitto_password_hash(password, existing="")`` returns a mosquitto 2.x password-file
hash (``$7$ITERATIONS$SALT$HASH``, PBKDF2-HMAC-SHA512, what ``mosquitto_passwd`` writes).
When ``existing`` is a hash of the same password it is returned unchanged, so re-running
the playbook leaves the password file alone (``changed=0``); otherwise a new random salt
is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

ITERATIONS = 10000  # mosquitto_passwd's default is 101; the broker reads it from each entry
SALT_BYTES = 12


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)


def _matches(password: str, existing: str) -> bool:
    parts = existing.strip().split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error):
        return False
    if not 1 <= iterations <= 10_000_000:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations), digest)


def mosquitto_password_hash(password: str, existing: str = "") -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("mosquitto_password_hash needs a non-empty password")
    if existing and _matches(password, existing):
        return existing.strip()
    salt = os.urandom(SALT_BYTES)
    digest = _pbkdf2(password, salt, ITERATIONS)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return "$".join(["", "7", str(ITERATIONS), *encoded])


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"mosquitto_password_hash": mosquitto_password_hash}

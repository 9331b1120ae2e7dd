#!/usr/bin/env python3
# ruff: noqa: T201 - a script the role runs on the host; it reports on stdout/stderr
"""Download the model resumably and install it only once its sha256 matches.

Run on the host by tasks/model.yml (ansible.builtin.script, the host's python3, standard
library only):

    model_fetch.py URL DEST SHA256 DEADLINE_S

The bytes go to DEST.part. A DEST.part left by an interrupted run is continued with an
HTTP Range request from its size, not started over: on a slow or flaky site link a 1.1 GB
model gets there across several runs. A server that ignores Range (200) sends the whole
file again, which replaces the part; one that answers 416 (nothing after the part) means
the part is complete. The finished part is hashed, and only a match is renamed to DEST
(atomically, after fsync); a mismatch deletes the part (it may hold the start of another
version of the file) and, when it had been resumed, downloads once more from the start.

Prints one JSON line: what was fetched ({"resumed_from", "received", "restarted"}).
Exits 1 with the reason on stderr when the file cannot be had or does not match.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
READ_TIMEOUT_S = 60  # one stalled read; the whole download has DEADLINE_S


class FetchError(Exception):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _get(url: str, part: Path, deadline: float) -> tuple[int, int]:
    """Continue `part` from `url`; (bytes it held before, bytes received)."""
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"{url}: only http:// and https:// URLs")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "edgeagent-model-fetch"})  # noqa: S310 - http(s) only, above
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=READ_TIMEOUT_S)  # noqa: S310 - the operator's URL
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return offset, 0  # nothing after the part: it is whole (the hash decides)
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"{url}: {exc}") from exc
    with response:
        if response.status == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start != str(offset):
                raise FetchError(f"{url}: asked for bytes {offset}-, got {start!r}")
        else:  # 200: the server ignored the range; the whole file comes
            offset = 0
        received = _write(response, part, append=offset > 0, deadline=deadline)
        # read(n) returns b"" when the connection drops early: what was sent is kept in
        # the part, and the next run continues from there.
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and received < int(length):
            raise FetchError(f"{url}: the connection ended after {received} of {length} bytes")
    return offset, received


def _write(response: Any, part: Path, *, append: bool, deadline: float) -> int:
    """The response body into the part (after what it holds, or instead of it)."""
    received = 0
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    with os.fdopen(os.open(part, flags, 0o640), "wb") as out:
        try:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                received += len(chunk)
                if time.monotonic() > deadline:
                    raise FetchError("not done within the deadline; run again to continue")
        finally:
            out.flush()
            os.fsync(out.fileno())  # what arrived is kept for the next run
    return received


def fetch(url: str, dest: Path, sha256: str, deadline_s: float) -> dict[str, object]:
    part = dest.with_name(dest.name + ".part")
    deadline = time.monotonic() + deadline_s
    resumed_from, received = _get(url, part, deadline)
    restarted = False
    if _sha256(part) != sha256:
        part.unlink()
        if not resumed_from:
            raise FetchError(f"{url} does not have sha256 {sha256}")
        restarted = True  # the part may have begun another version of the file
        _, received = _get(url, part, deadline)
        if _sha256(part) != sha256:
            part.unlink()
            raise FetchError(f"{url} does not have sha256 {sha256}")
    part.replace(dest)
    directory = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename survives a power cut
    finally:
        os.close(directory)
    return {"resumed_from": resumed_from, "received": received, "restarted": restarted}


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("usage: model_fetch.py URL DEST SHA256 DEADLINE_S", file=sys.stderr)
        return 2
    url, dest, sha256, deadline_s = argv[1], Path(argv[2]), argv[3].lower(), float(argv[4])
    try:
        result = fetch(url, dest, sha256, deadline_s)
    except (FetchError, OSError, http.client.HTTPException) as exc:
        print(f"model download failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

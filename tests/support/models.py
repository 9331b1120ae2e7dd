"""The project's models as the tests get them: scripts/fetch_model.py (sha256-checked,
cached in ~/.cache/edgeagent/models), the same way `make models` and the role get them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.daemon import ROOT


def fetched_model(name: str) -> Path:
    """The cached GGUF of `name` (smollm2, qwen-coder, qwen-coder-1.5b), fetched if absent."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_model.py"), name],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])

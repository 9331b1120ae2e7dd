"""What one decode of k tokens costs against one token: does batching pay on this machine?

    python -m edgeagent.cli.bench_probe MODEL.gguf THREADS [repack]

Prints one JSON line: per k (1, 2, 4, 7, 8), the time of a decode of one token for each
of k sequences and the aggregate tokens/s it gives against k single steps; and the time
of a verification batch of k tokens of one sequence, logits for every row (what
speculative decoding pays), in single steps. Near 1 where reading the weights is the
limit (batching and drafts pay), near k where arithmetic is (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgeagent.inference.model import ResidentModel

TEXT = (
    "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: device descriptor read/64, error -71; "
    "retrying in 500 ms (port 3, hub 1-1, speed high)"
)
SIZES = (1, 2, 4, 7, 8)
REPEAT = 8


def _best_median(run: Callable[[], object], undo: Callable[[], None]) -> float:
    """Best of two medians of REPEAT timed runs (ms); load on the machine only adds."""
    medians = []
    for _ in range(2):
        times = []
        for _ in range(REPEAT):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000)
            undo()
        medians.append(statistics.median(times))
    return min(medians)


def probe(path: Path, threads: int, *, repack: bool) -> dict[str, object]:
    model = ResidentModel(path, threads=threads, n_ctx=512, n_batch=256, n_seq=8, repack=repack)
    try:
        model.use_streams(max(SIZES), {})
        kv = model.kv
        prompt = model.tokenize(TEXT)
        for seq in range(max(SIZES)):
            kv.feed(seq, prompt)
        held = len(prompt)

        def forget(count: int) -> Callable[[], None]:
            def undo() -> None:
                for seq in range(count):
                    kv.remove(seq, held)

            return undo

        def batch(k: int) -> Callable[[], object]:
            return lambda: kv.decode([(seq, [prompt[0]], False) for seq in range(k)])

        def verification(k: int) -> Callable[[], object]:
            return lambda: kv.decode([(0, prompt[:k], True)])

        decode = {k: _best_median(batch(k), forget(k)) for k in SIZES}
        verify = {k: _best_median(verification(k), forget(1)) for k in SIZES}
        one = decode[1]
        return {
            "model": path.name,
            "threads": threads,
            "repack": repack,
            "invariant_rows": model.invariant_rows,
            "decode_ms": {k: round(v, 1) for k, v in decode.items()},
            "batch_tokens_per_s_vs_one": {k: round(k * one / v, 2) for k, v in decode.items()},
            "verify_cost_in_steps": {k: round(v / one, 2) for k, v in verify.items()},
        }
    finally:
        model.close()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    result = probe(Path(sys.argv[1]), int(sys.argv[2]), repack=sys.argv[3:] == ["repack"])
    sys.stdout.write(json.dumps(result) + "\n")

"""How many tokens one decode may hold and still give the logits of single-token steps.

llama.cpp's CPU kernels do not promise that a token's logits are the same whether it is
decoded alone or in a batch with others: some operations switch to another kernel
(another summation order) above a batch size, and the last bits change. A greedy
answer can then take another token where two candidates are nearly tied. Measured on
x86-64 with flash attention (llama.cpp's default on CPU) and without repacked weights:
up to 7 tokens per batch are exact for Qwen2.5-0.5B Q4_K_M (8 are not), up to 63 for
SmolLM2-135M Q4_1; with repacked Q4_K weights (`use_extra_bufts`) not even 2 are.

Speculative decoding verifies a draft in one batch; it keeps its batches within the
limit measured here, when the model loads, so that its answers are exactly the
plain greedy ones (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeagent.inference.kvcache import KvContext

_TEXT = (
    "Nov 29 07:41:12 pi-07 kernel: usb 1-1.3: device descriptor read/64, error -71; "
    "retrying in 500 ms. Zone 4 report at 14:05: air temperature 38.2 C, humidity 21 %, "
    "soil dry, fans at full speed since noon, tomatoes wilting on the south side."
)
# ~94 tokens: the context before the probed batch. Twice as long found the same limit for
# SmolLM2-135M (9 of 9), Qwen2.5-0.5B and 1.5B (7) on x86-64, and cost a third more at
# every model load (on a Pi, seconds of start-up).
PROBE_TEXT = _TEXT


def invariant_batch_rows(kv: KvContext, tokens: Sequence[int], *, limit: int) -> int:
    """Largest k <= limit (at least 1) such that k tokens decoded in one batch give,
    bit for bit, the logits the same tokens give decoded one at a time.

    tokens: a realistic token sequence of at least 16 + limit tokens; the first ones
    are the context, the last `limit` the probed batch. Leaves the context empty.
    """
    context = list(tokens[: len(tokens) - limit])
    probe = list(tokens[len(context) :])
    if len(context) < 16 or len(probe) < limit:
        raise ValueError("the probe needs at least 16 + limit tokens")
    kv.clear()
    kv.feed(0, context)
    single = []
    for token in probe:
        kv.decode([(0, [token], False)])
        single.append(np.array(kv.logits(-1)))

    def exact(k: int) -> bool:
        kv.remove(0, len(context))
        (start,) = kv.decode([(0, probe[:k], True)])
        return all(np.array_equal(kv.logits(start + i), single[i]) for i in range(k))

    low, high = 1, limit  # exact(low) holds: a batch of one is a single step
    while low < high:
        middle = (low + high + 1) // 2
        if exact(middle):
            low = middle
        else:
            high = middle - 1
    kv.clear()
    return low

"""When tasks run together: the one rule the service worker and the batcher follow.

Decoding several sequences in one step pays only from a few of them on (batch.py: two
sequences in lockstep gave 0.85x the tokens/s of one on the 2-core x86 test machine),
and every sequence beyond the first is a KV stream of n_ctx tokens. So:

* below `min_batch` tasks, one task at a time: the service worker hands the engine one
  job, and the batcher serves the open sequences one after the other;
* from `min_batch` tasks on, up to `parallel` at once: the worker hands over that many
  queued jobs, and the batcher decodes their sequences together (when its cost gate,
  batch_costs.BatchCosts, says batches pay on this machine).

`max_parallel` is what the model was loaded to hold (`[model] parallel`, or what the
load-time probe measured); the memory governor lowers `parallel` under pressure.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_BATCH = 4
MAX_PARALLEL = 8  # sequences a model is ever loaded to hold (`[model] parallel` at most)


@dataclass
class BatchRule:
    min_batch: int = MIN_BATCH
    max_parallel: int = 1
    parallel: int = 0  # tasks at once now; 0: max_parallel

    def __post_init__(self) -> None:
        parallel = self.parallel
        self.hold(self.max_parallel)
        if parallel:
            self.set_parallel(parallel)

    def hold(self, max_parallel: int) -> None:
        """The sequences the loaded model holds at most; `parallel` starts there."""
        self.max_parallel = self.parallel = max(1, max_parallel)

    def set_parallel(self, parallel: int) -> None:
        """Tasks at once from now on, within 1..max_parallel (the memory governor's choice)."""
        self.parallel = max(1, min(parallel, self.max_parallel))

    def together(self, tasks: int) -> bool:
        """Whether `tasks` tasks at once make a batch."""
        return tasks >= self.min_batch

    def at_once(self, running: int, waiting: int) -> int:
        """Tasks to run at once with `running` running and `waiting` more queued: up to
        `parallel` when they make a batch together, else one."""
        return self.parallel if self.together(running + waiting) else 1

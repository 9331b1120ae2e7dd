"""The learner: operators' rulings in, the most similar learned examples out.

`record(resolution)` is the operator loop's hook (docs/protocol.md, service/holds/
learning.py): the daemon calls it after a resolution is committed, from the task store's
thread. It never raises and never blocks: the ruling is checked and mapped there
(microseconds), the write goes to the learner's own thread, at most
`MAX_PENDING_WRITES` of them waiting.

    confirmed -> the model's action and arguments were right
    edited    -> the model's action with the operator's arguments is right
    rejected  -> the catalog's nothing-to-do action was right (none: nothing learned)
    expired   -> nothing learned

Nothing is learned from an input longer than what the operator was shown
(shots.TEXT_MAX_CHARS), nor an answer the catalog would refuse now (an unknown action,
arguments its schema does not accept).

`shots(text, allowed)` runs on the same thread, within a timeout: the newest
`max_learned_examples` rows, those the catalog still accepts, the
`learned_examples_per_task` most similar to the task's input (inference/shots.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from edgeagent.config import ActionConfig, Config
from edgeagent.config.catalog import CatalogConfig, nothing_to_do
from edgeagent.inference.shots import Catalog, Shot, choose, fits
from edgeagent.service.holds.resolution import HoldResolution
from edgeagent.service.learning.store import LEARNED_FILE, LearnedExample, LearnedStore

log = structlog.get_logger("edgeagent.service.learning")

MAX_PENDING_WRITES = 64  # rulings waiting for the thread; more are dropped (and logged)
SHOTS_TIMEOUT_S = 2.0  # a task waits no longer for its examples: it runs without them
LEARNED = frozenset({"confirmed", "edited", "rejected"})


def learned_example(  # noqa: PLR0911 - one return per reason nothing is learned
    resolution: HoldResolution, catalog: Catalog
) -> tuple[LearnedExample | None, str]:
    """What `resolution` teaches (None: nothing), and why."""
    if resolution.decision not in LEARNED:
        return None, f"decision {resolution.decision!r} teaches nothing"
    action, args = resolution.action, resolution.final_args
    if resolution.decision == "confirmed" and args is None:
        args = resolution.args
    if resolution.decision == "rejected":
        default = nothing_to_do(list(catalog.actions))
        if default is None:
            return None, "the catalog has no nothing-to-do action"
        action, args = default.name, {}
    if not isinstance(args, dict):
        return None, "no arguments to learn"
    if not isinstance(resolution.text, str):
        return None, "the input is not text"
    too_long = fits(resolution.text, action, args)
    if too_long is not None:
        return None, too_long
    problem = catalog.refused(action, args)
    if problem is not None:
        return None, problem
    example = LearnedExample(
        text=resolution.text,
        action=action,
        args=args,
        decision=resolution.decision,
        model_action=resolution.action,
        model_args=dict(resolution.args),
        task_id=resolution.task_id,
        by=resolution.by,
        at=resolution.at,
    )
    return example, "learned"


class Learner:
    """The learned-examples store on its own thread; every failure is logged, none raised."""

    def __init__(
        self,
        store: LearnedStore | None,
        *,
        actions: Sequence[ActionConfig],
        settings: CatalogConfig,
        timeout_s: float = SHOTS_TIMEOUT_S,
    ) -> None:
        """store None: learning is off (`[catalog] learn = false`, or the file failed)."""
        self._store = store
        self._catalog = Catalog(actions)
        self._settings = settings
        self._timeout_s = timeout_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeagent-learning")
        self._pending = 0
        self._lock = threading.Lock()
        self.learned = 0  # examples written since start
        self.dropped = 0  # rulings not written: the thread was too far behind, or failed

    @classmethod
    def open(cls, cfg: Config) -> Learner:
        """The learner `cfg` asks for; off when learning is, or the file cannot be opened."""
        store: LearnedStore | None = None
        if cfg.catalog.learn:
            path = cfg.state.dir / LEARNED_FILE
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                store = LearnedStore(path, max_rows=cfg.catalog.max_learned_examples)
            except Exception as exc:  # learning is a help: the daemon serves on without it
                log.error(  # noqa: TRY400 - the error is the whole story
                    "cannot open the learned examples; not learning", path=str(path), error=str(exc)
                )
        return cls(store, actions=cfg.actions, settings=cfg.catalog)

    @property
    def enabled(self) -> bool:
        return self._store is not None and self._settings.learn

    def reconfigure(self, cfg: Config) -> None:
        """A reloaded config: its catalog and limits (learning on or off needs a restart)."""
        self._catalog = Catalog(cfg.actions)
        self._settings = cfg.catalog
        if self._store is not None:
            self._store.max_rows = cfg.catalog.max_learned_examples

    def record(self, resolution: HoldResolution) -> Future[None] | None:
        """Learn from an operator's ruling; the write happens on the learner's thread.

        Returns the write's future (tests and the measurement wait on it), None when
        nothing is written. Never raises.
        """
        try:
            return self._record(resolution)
        except Exception:
            log.exception("learning from a resolution failed")
            self.dropped += 1
            return None

    def _record(self, resolution: HoldResolution) -> Future[None] | None:
        store = self._store
        if store is None or not self._settings.learn:
            return None
        example, why = learned_example(resolution, self._catalog)
        if example is None:
            log.info("nothing learned", task_id=resolution.task_id, why=why)
            return None
        with self._lock:
            if self._pending >= MAX_PENDING_WRITES:
                self.dropped += 1
                log.warning("learning is behind; a ruling was dropped", task_id=example.task_id)
                return None
            self._pending += 1
        future = self._thread.submit(self._write, store, example)
        log.info(
            "learned",
            task_id=example.task_id,
            decision=example.decision,
            action=example.action,
        )
        return future

    def _write(self, store: LearnedStore, example: LearnedExample) -> None:
        try:
            store.add(example)
            self.learned += 1
        except Exception as exc:
            self.dropped += 1
            log.error("writing a learned example failed", task_id=example.task_id, error=str(exc))  # noqa: TRY400 - the error is the whole story
        finally:
            with self._lock:
                self._pending -= 1

    async def shots(self, text: str, allowed: Sequence[str]) -> tuple[Shot, ...]:
        """The learned examples to show with a task whose input is `text`; none when
        learning is off, nothing fits, or the store does not answer in time."""
        store, k = self._store, self._settings.learned_examples_per_task
        if store is None or not self._settings.learn or k == 0:
            return ()
        catalog = self._catalog
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout_s):
                return await loop.run_in_executor(
                    self._thread, lambda: self._choose(store, text, allowed, catalog, k)
                )
        except Exception as exc:  # a task never fails for want of examples
            log.warning("no learned examples for this task", error=f"{type(exc).__name__}: {exc}")
            return ()

    @staticmethod
    def _choose(
        store: LearnedStore,
        text: str,
        allowed: Sequence[str],
        catalog: Catalog,
        k: int,
    ) -> tuple[Shot, ...]:
        # The catalog may have changed since an example was learned: only what it
        # would accept now is shown.
        candidates = (
            Shot(row.text, row.action, row.args)
            for row in store.recent()
            if row.action in allowed and catalog.refused(row.action, row.args) is None
        )
        return choose(text, candidates, k, allowed=allowed)

    def close(self) -> None:
        """Bounded: waits for the writes queued so far (each is one small transaction)."""
        if self._store is not None:
            store = self._store
            try:
                self._thread.submit(store.close).result(self._timeout_s)
            except Exception as exc:
                log.warning("closing the learned examples failed", error=str(exc))
        self._thread.shutdown(wait=False, cancel_futures=True)

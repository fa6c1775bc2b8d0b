"""The prefix worker: ``concurrency`` threads take the listing's objects one at a time and
process them, with checkpoints, a report, retries and an early stop on too many failures.

Memory is bounded: the listing look-ahead window, at most ``concurrency`` objects in progress,
and counters keyed by reason code. Nothing per object is kept once it is reported.

Checkpoints advance a low-water mark: the last key such that it and every key before it are
finished. Objects finish out of order; the in-flight queue below records their order.

An object whose write still has to be confirmed (its result carries ``unconfirmed``: the object
must be unchanged after the write) is not finished yet: its result waits, and the mark stays
before it, until a batch of them (``confirm_batch``, one listing page, or what gathered in
``confirm_interval`` seconds) is confirmed with one re-listing of their keys
(``source.changed``) instead of a HEAD each. A replaced object's write
is withdrawn and the object retried (with a HEAD, since the listing's view is stale).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

from keymigration.errors import SetupError
from keymigration.migrate.checkpoint import Checkpoint, CheckpointStore
from keymigration.migrate.report import Counters, ReportWriter
from keymigration.migrate.results import ListingHint, ObjectResult, Outcome
from keymigration.migrate.sources import ListingSource, ObjectSource, WorkItem

log = logging.getLogger("keymigration.worker")

ProcessFn = Callable[[str, ListingHint], ObjectResult]

# Exit codes (the Job's podFailurePolicy relies on them; docs/worker.md#exit-codes). The deliberate
# outcomes use codes no crash produces (a traceback exits 1, argparse 2, a signal 128+N), so a
# Job fails at once on them and retries everything else.
EXIT_OK = 0
EXIT_INTERRUPTED = 4  # stopped by a signal or a transient listing error: resume from the checkpoint
EXIT_FAILED_OBJECTS = 10  # finished; some objects failed (permanent: a retry would not help)
EXIT_TOO_MANY_FAILURES = 11  # stopped at --max-failures
EXIT_CONFIG = 12  # invalid arguments, keys, target key or checkpoint: nothing was done
EXIT_RETRY = 75  # (sysexits EX_TEMPFAIL) start-up could not reach what it needs, or an unexpected error: run again

TICK_SECONDS = 0.25  # checkpoint, progress and confirmation checks while every thread is busy


class ProgressSink(Protocol):
    def update(self, snapshot: dict) -> None: ...

    def close(self, summary: dict) -> None: ...


@dataclass
class WorkerOptions:
    bucket: str
    prefix: str
    concurrency: int = 16
    max_failures: int | None = None
    object_retries: int = 3
    checkpoint_interval: float = 2.0
    progress_interval: float = 1.0
    window: int = 2000
    file_suffixes: Sequence[str] = (".instruction",)
    skip_suffixes: Sequence[str] = ()
    count_total: bool = True
    confirm_batch: int = 1000  # unconfirmed writes confirmed by one re-listing
    confirm_interval: float = 2.0  # ... or once the oldest has waited this long (seconds)


@dataclass
class _InFlight:
    key: str
    position: object
    result: ObjectResult | None = None


@dataclass
class Summary:
    counters: Counters
    elapsed: float
    exit_code: int
    stopped: str | None = None
    total: int | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {
            **self.counters.as_dict(),
            "elapsed_seconds": round(self.elapsed, 3),
            "objects_per_second": round(self.counters.scanned / self.elapsed, 1) if self.elapsed > 0 else None,
            "exit_code": self.exit_code,
        }
        if self.total is not None:
            out["total"] = self.total
        if self.stopped:
            out["stopped"] = self.stopped
        out.update(self.extra)
        return out


class PrefixWorker:
    def __init__(
        self,
        s3,
        process: ProcessFn,
        options: WorkerOptions,
        checkpoint: Checkpoint,
        store: CheckpointStore | None = None,
        report: ReportWriter | None = None,
        progress: ProgressSink | None = None,
        extra_summary: Callable[[], dict] | None = None,
        source: ObjectSource | None = None,
    ):
        self.s3 = s3
        # Default: the whole prefix's listing (the Migration passes a key range or an inventory).
        self.source = source or ListingSource(
            s3, options.bucket, options.prefix, options.file_suffixes, options.skip_suffixes, options.window
        )
        self.process = process
        self.options = options
        self.checkpoint = checkpoint
        self.store = store
        self.report = report
        self.progress = progress
        self.extra_summary = extra_summary or dict
        self.committed = Counters.from_dict(checkpoint.counters)  # objects up to the mark
        self.completed = self.committed.copy()  # every object finished, also past the mark
        self.listed_aux: Counter[str] = Counter()
        self.total: int | None = None
        self.stop = threading.Event()
        self.stopped: str | None = None
        self.listing_error: Exception | None = None
        self._lock = threading.Lock()
        self._inflight: deque[_InFlight] = deque()
        self._unconfirmed: list[tuple[_InFlight, ObjectResult]] = []
        self._unconfirmed_since = 0.0  # when the oldest waiting write finished
        self._confirming = threading.Lock()
        self._taking = threading.Lock()  # the listing, read by one thread at a time
        self._ticking = threading.Lock()
        self._pulling = 0  # threads still taking objects
        self._all_pulled = threading.Event()
        self._last_checkpoint = 0.0
        self._last_progress = 0.0
        self._started = 0.0

    # -- public -------------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        if not self.stop.is_set():
            self.stopped = why
            self.stop.set()

    def run(self) -> Summary:
        self._started = time.monotonic()
        if self.checkpoint.done:
            return self._finish(interrupted=False)
        if self.options.count_total:
            threading.Thread(target=self._count_total, name="count-total", daemon=True).start()
        objects = self.source.items(self.checkpoint, self.listed_aux)
        self._start_pulling(objects)
        while True:
            try:
                # The threads tick after each object; this covers a time when all are busy long.
                while not self._all_pulled.wait(TICK_SECONDS):
                    self._tick_or_stop()
                break
            except KeyboardInterrupt:
                self.request_stop("interrupted")  # then wait for the objects in progress
        self._confirm(wait=True)  # the last writes, also when stopping: a listing is cheap
        return self._finish(interrupted=self.stop.is_set())

    # -- internals ----------------------------------------------------------------------------

    def _run_one(self, key: str, hint: ListingHint | None, attempt: int = 0) -> ObjectResult:
        while True:
            try:
                result = self.process(key, hint)
            except Exception as exc:  # a bug must not stop the other objects
                log.exception("unexpected error processing an object")
                result = ObjectResult(key, Outcome.FAILED, "internal-error", f"{type(exc).__name__}")
            if not result.retryable or attempt >= self.options.object_retries or self.stop.is_set():
                return result
            attempt += 1
            hint = None  # the listing's view is stale now
            time.sleep(min(5.0, 0.25 * 2**attempt) * (0.5 + random.random()))

    def _start_pulling(self, objects: Iterator[WorkItem]) -> None:
        """Start the ``concurrency`` threads; if the system refuses one (a pids limit), the run
        stops and the ones started finish their objects, as at any other stop. The starter
        holds a count of its own until all are started, so that ``_all_pulled`` cannot be set
        by early threads while later ones are still to come."""
        self._pulling = 1
        try:
            for i in range(max(1, self.options.concurrency)):
                with self._lock:
                    self._pulling += 1
                try:
                    threading.Thread(target=self._pull, args=(objects,), name=f"rewrap_{i}", daemon=True).start()
                except RuntimeError as error:
                    self._left_pulling()
                    log.error("could not start a worker thread: %s", error)
                    self.request_stop(f"could not start thread {i + 1} of {self.options.concurrency}: {error}")
                    return
        finally:
            self._left_pulling()

    def _left_pulling(self) -> None:
        with self._lock:
            self._pulling -= 1
            if self._pulling == 0:
                self._all_pulled.set()

    def _pull(self, objects: Iterator[WorkItem]) -> None:
        """One of ``concurrency`` threads: takes the listing's next object, processes it,
        records it, until the listing ends or the run stops. The threads pull their work
        rather than being handed it: no thread is woken to hand out each object (measured:
        a thread pool fed one object per freed slot cost about 70 us of CPU per object more)."""
        try:
            while (taken := self._take(objects)) is not None:
                entry, hint = taken
                try:
                    result = self._run_one(entry.key, hint)
                except BaseException as exc:  # noqa: BLE001 - recorded as retryable; the mark stays before it
                    result = ObjectResult(entry.key, Outcome.FAILED, "internal-error", type(exc).__name__, retryable=True)
                self._done(entry, result)
                self._tick_or_stop()
        finally:
            self._left_pulling()

    def _take(self, objects: Iterator[WorkItem]) -> tuple[_InFlight, ListingHint | None] | None:
        """The listing's next object, entered in flight in listing order; None at its end, when
        the run stops, or when the listing failed (the run then stops, saying why)."""
        with self._taking:
            if self.stop.is_set():
                return None
            try:
                item = next(objects)
            except StopIteration:
                return None
            except Exception as exc:  # the listing failed: keep what is done, say why
                self.listing_error = exc
                self.request_stop(f"listing failed: {type(exc).__name__}: {exc}")
                return None
            entry = _InFlight(item.key, item.position)
            with self._lock:
                self._inflight.append(entry)
            return entry, item.hint

    def _done(self, entry: _InFlight, result: ObjectResult) -> None:
        try:
            self._record(entry, result)
        except Exception:  # e.g. the report's disk is full: stop cleanly rather than hang
            log.exception("could not record an object's outcome")
            self.request_stop("could not record an outcome (see the log)")
        if len(self._unconfirmed) >= self.options.confirm_batch:
            self._confirm(wait=False)
        if self.options.max_failures is not None and self.completed.failed >= self.options.max_failures:
            self.request_stop(f"max failures ({self.options.max_failures}) reached")

    def _record(self, entry: _InFlight, result: ObjectResult) -> None:
        with self._lock:
            if result.unconfirmed is not None:
                if not self._unconfirmed:
                    self._unconfirmed_since = time.monotonic()
                self._unconfirmed.append((entry, result))
            else:
                self._finished(entry, result)

    def _finished(self, entry: _InFlight, result: ObjectResult) -> None:
        """Record one object's outcome and advance the mark (under ``self._lock``)."""
        # A transient failure while stopping is not an outcome: the entry stays unfinished,
        # so the mark never passes it and a resumed run processes the object again.
        if not (result.retryable and self.stop.is_set()):
            entry.result = result
            self.completed.add(result)
            if self.report:
                self.report.write(result)
            # Failures always reach the log; other outcomes only at debug level (volume).
            if result.outcome is Outcome.FAILED:
                log.warning("object failed: %s", result.reason, extra=self._log_fields(result))
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("object %s: %s", result.outcome, result.reason, extra=self._log_fields(result))
            while self._inflight and self._inflight[0].result is not None:
                done = self._inflight.popleft()
                self.committed.add(done.result)
                self.source.mark(self.checkpoint, done.position)

    def _confirm(self, wait: bool) -> None:
        """Settle the writes waiting for confirmation with one re-listing of their keys; a
        replaced object is retried at once (with a HEAD). ``wait``: also when another thread is
        confirming (the end of the run); else leave it to that thread."""
        if not self._confirming.acquire(blocking=wait):
            return
        try:
            with self._lock:
                batch, self._unconfirmed = self._unconfirmed, []
            if not batch:
                return
            changed = self._changed({r.key: r.unconfirmed.etag for _, r in batch if r.unconfirmed})
            settled = [(entry, self._settle(result, changed)) for entry, result in batch]
            with self._lock:
                for entry, result in settled:
                    self._finished(entry, result)
        except Exception:  # e.g. the report's disk is full: stop cleanly; the mark stays before them
            log.exception("could not confirm or record a batch of outcomes")
            self.request_stop("could not record an outcome (see the log)")
        finally:
            self._confirming.release()

    def _changed(self, expected: dict[str, str]) -> set[str] | None:
        """The keys the source's re-listing shows replaced or gone; None when it cannot tell
        (a source without a listing, or the listing failed): then each object is asked alone."""
        relist = getattr(self.source, "changed", None)
        if relist is None:
            return None
        try:
            return relist(expected)
        except Exception:
            log.warning("re-listing %d objects failed; confirming them one by one", len(expected), exc_info=True)
            return None

    def _settle(self, result: ObjectResult, changed: set[str] | None, retry: bool = True) -> ObjectResult:
        pending, result.unconfirmed = result.unconfirmed, None
        assert pending is not None
        try:
            pending.settle(result, None if changed is None else result.key in changed)
        except Exception as exc:  # a bug must not stop the other objects
            log.exception("unexpected error confirming an object")
            result = ObjectResult(result.key, Outcome.FAILED, "internal-error", f"{type(exc).__name__}", retryable=True)
        if retry and result.retryable and not self.stop.is_set() and self.options.object_retries > 0:
            result = self._run_one(result.key, None, attempt=1)  # no listing view now: a HEAD confirms
            if result.unconfirmed is not None:
                result = self._settle(result, None, retry=False)
        return result

    def _log_fields(self, result: ObjectResult) -> dict:
        return {"prefix": self.options.prefix, "object_key": result.key, "outcome": str(result.outcome), "reason": result.reason}

    def _tick_or_stop(self) -> None:
        """``_tick``, unless another thread is ticking (one checkpoint write at a time); if it
        fails (the checkpoint's disk is full), the run stops cleanly: the objects in progress
        finish and are confirmed, and the mark stays where it was last saved."""
        if not self._ticking.acquire(blocking=False):
            return
        try:
            self._tick()
        except Exception:
            log.exception("could not save a checkpoint or report progress")
            self.request_stop("could not save a checkpoint (see the log)")
        finally:
            self._ticking.release()

    def _tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._unconfirmed and now - self._unconfirmed_since >= self.options.confirm_interval:
            self._confirm(wait=False)
        if self.store and (force or now - self._last_checkpoint >= self.options.checkpoint_interval):
            self._save_checkpoint()
            self._last_checkpoint = now
        if self.progress and (force or now - self._last_progress >= self.options.progress_interval):
            self.progress.update(self._snapshot())
            self._last_progress = now

    def _save_checkpoint(self) -> None:
        with self._lock:
            self.checkpoint.counters = self.committed.as_dict()
            snapshot = Checkpoint.from_json(self.checkpoint.to_json())
        assert self.store is not None
        self.store.save(snapshot)

    def _snapshot(self) -> dict:
        with self._lock:
            counters = self.completed.as_dict()
        elapsed = time.monotonic() - self._started
        return {
            **counters,
            "total": self.total,
            "elapsed_seconds": round(elapsed, 1),
            "after": self.checkpoint.after,
            **self.extra_summary(),
        }

    def _count_total(self) -> None:
        try:
            self.total = self.source.count(self.stop)
        except Exception:  # counting is a nicety for ETA; never fail the run over it
            log.debug("counting the prefix failed", exc_info=True)

    def _finish(self, interrupted: bool) -> Summary:
        finished = not interrupted
        with self._lock:
            if finished:
                self.checkpoint.done = True
        if self.store:
            self._save_checkpoint()
        counters = self.completed
        if self.stopped and self.stopped.startswith("max failures"):
            code = EXIT_TOO_MANY_FAILURES
        elif self.listing_error is not None and _permanent(self.listing_error):
            code = EXIT_CONFIG
        elif interrupted:
            code = EXIT_INTERRUPTED
        elif counters.failed:
            code = EXIT_FAILED_OBJECTS
        else:
            code = EXIT_OK
        extra = dict(self.extra_summary())
        if self.listed_aux:
            extra["instruction_files_listed"] = dict(self.listed_aux)
        summary = Summary(counters, time.monotonic() - self._started, code, self.stopped, self.total, extra)
        if self.report:
            self.report.summary(summary.as_dict())
        if self.progress:
            self.progress.close(summary.as_dict())
        return summary


def _permanent(error: Exception) -> bool:
    """Listing errors no retry will fix: no such bucket, access denied, an unusable inventory."""
    if isinstance(error, SetupError):
        return True
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in {"NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidBucketName", "403", "404"}

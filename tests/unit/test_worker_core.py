"""The worker's bookkeeping, in-process with a fake S3 listing and fake per-object work."""
import random
import threading
import time

from keymigration.aws.ratelimit import TokenBucket
from keymigration.migrate.checkpoint import Checkpoint, MemoryCheckpointStore
from keymigration.migrate.results import ObjectResult, Outcome, Unconfirmed
from keymigration.migrate.worker import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TOO_MANY_FAILURES,
    PrefixWorker,
    WorkerOptions,
)


class FakeS3:
    def __init__(self, keys):
        self.keys = sorted(keys)

    def get_paginator(self, name):
        keys = self.keys

        class Paginator:
            def paginate(self, Bucket, Prefix, PaginationConfig, StartAfter=None):
                selected = [k for k in keys if k.startswith(Prefix) and (StartAfter is None or k > StartAfter)]
                for i in range(0, len(selected), 3):
                    yield {"Contents": [{"Key": k, "ETag": '"e"', "Size": 1} for k in selected[i:i + 3]]}

        return Paginator()


def worker(keys, process, store=None, checkpoint=None, **options):
    options.setdefault("concurrency", 4)
    opts = WorkerOptions(bucket="b", prefix="", checkpoint_interval=0, count_total=False, **options)
    return PrefixWorker(FakeS3(keys), process, opts, checkpoint or Checkpoint("b", "", ".instruction", "k"), store=store)


def test_out_of_order_completion_checkpoints_only_the_finished_run():
    keys = [f"k{i:03d}" for i in range(40)]
    slow = {"k005"}
    gate = threading.Event()
    store = MemoryCheckpointStore()

    def process(key, hint):
        if key in slow:
            gate.wait(15)
        else:
            time.sleep(random.random() / 1000)
        return ObjectResult(key, Outcome.MIGRATED, "migrated")

    w = worker(keys, process, store=store)
    done = threading.Thread(target=lambda: setattr(w, "summary", w.run()))
    done.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and w.completed.scanned < 20:  # many objects after k005 finish
        time.sleep(0.01)
    w._save_checkpoint()
    assert w.completed.scanned >= 20
    assert store.saved.after == "k004" and store.saved.counters["migrated"] == 5  # k005 still running
    gate.set()
    done.join()
    assert w.summary.exit_code == EXIT_OK
    assert store.saved.done and store.saved.after == "k039" and store.saved.counters["migrated"] == 40


def test_instruction_files_and_backups_are_not_objects():
    keys = ["a", "a.instruction", "a.instruction.keymigration-backup", "b", "b.rewrapped"]
    seen = []
    w = worker(keys, lambda k, h: (seen.append((k, dict(h.files))), ObjectResult(k, Outcome.SKIPPED, "x"))[1],
               file_suffixes=(".instruction", ".rewrapped"), skip_suffixes=(".keymigration-backup",))
    summary = w.run()
    assert sorted(seen) == [("a", {"a.instruction": '"e"'}), ("b", {"b.rewrapped": '"e"'})]
    assert summary.counters.scanned == 2


def test_resume_continues_after_the_mark_with_its_counters():
    keys = [f"k{i}" for i in range(10)]
    checkpoint = Checkpoint("b", "", ".instruction", "k", after="k4", counters={"scanned": 5, "migrated": 5})
    seen = []
    summary = worker(keys, lambda k, h: (seen.append(k), ObjectResult(k, Outcome.MIGRATED, "migrated"))[1],
                     checkpoint=checkpoint).run()
    assert seen and min(seen) == "k5" and summary.counters.migrated == 10


def test_transient_failures_are_retried_and_counted_once():
    attempts = {}

    def process(key, hint):
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] < 3:
            return ObjectResult(key, Outcome.FAILED, "s3-SlowDown", retryable=True)
        return ObjectResult(key, Outcome.MIGRATED, "migrated")

    w = worker(["x", "y"], process, object_retries=3)
    w.options.object_retries = 3
    import keymigration.migrate.worker as module
    original = module.time.sleep
    module.time.sleep = lambda s: None
    try:
        summary = w.run()
    finally:
        module.time.sleep = original
    assert attempts == {"x": 3, "y": 3} and summary.counters.migrated == 2 and summary.counters.failed == 0


def test_max_failures_and_stop_exit_codes():
    keys = [f"k{i:02d}" for i in range(50)]
    summary = worker(keys, lambda k, h: ObjectResult(k, Outcome.FAILED, "wrong-key"), max_failures=3, concurrency=1).run()
    assert summary.exit_code == EXIT_TOO_MANY_FAILURES and 3 <= summary.counters.failed < 50

    w = worker(keys, lambda k, h: (time.sleep(0.001), ObjectResult(k, Outcome.MIGRATED, "migrated"))[1], concurrency=1)
    threading.Timer(0.02, lambda: w.request_stop("signal")).start()
    summary = w.run()
    assert summary.exit_code == EXIT_INTERRUPTED and summary.counters.scanned < 50


def test_a_crashing_object_does_not_stop_the_others():
    def process(key, hint):
        if key == "boom":
            raise RuntimeError("bug")
        return ObjectResult(key, Outcome.MIGRATED, "migrated")

    summary = worker(["a", "boom", "c"], process).run()
    assert summary.counters.migrated == 2 and summary.counters.reasons["failed:internal-error"] == 1


def test_token_bucket_paces_requests():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(10, burst=1, clock=lambda: now[0], sleep=sleep)
    for _ in range(11):
        bucket.acquire()
    assert abs(now[0] - 1.0) < 1e-9  # 11 tokens at 10/s with a burst of 1: one second
    unlimited = TokenBucket(None, sleep=lambda s: (_ for _ in ()).throw(AssertionError("slept")))
    for _ in range(1000):
        unlimited.acquire()


def unconfirmed_process(calls: list):
    """Every object migrated, its write left to the worker to confirm; records each settle."""

    def settle(result, changed):
        calls.append((result.key, changed))
        if changed:
            result.outcome, result.reason, result.retryable = Outcome.FAILED, "object-changed", False

    def process(key, hint):
        return ObjectResult(key, Outcome.MIGRATED, "migrated", unconfirmed=Unconfirmed(key, '"e"', settle))

    return process


def test_unconfirmed_writes_hold_the_mark_until_a_relisting_settles_them():
    keys = [f"k{i:03d}" for i in range(10)]
    calls, marks, store = [], [], MemoryCheckpointStore()
    w = worker(keys, unconfirmed_process(calls), store=store, confirm_batch=1000, confirm_interval=600)
    w.source.changed = lambda expected: (marks.append((w.checkpoint.after, w.completed.scanned, len(expected))), {"k004"})[1]
    summary = w.run()
    assert marks == [(None, 0, 10)]  # nothing counted or passed by the mark before the re-listing
    assert store.saved.done and (summary.counters.migrated, summary.counters.failed) == (9, 1)
    assert sorted(calls) == [(k, k == "k004") for k in keys]  # one re-listing settled all ten


def test_a_failed_relisting_confirms_each_object_alone():
    keys = [f"k{i:03d}" for i in range(5)]
    calls = []
    w = worker(keys, unconfirmed_process(calls), confirm_batch=2)

    def broken(expected):
        raise OSError("connection reset")

    w.source.changed = broken
    assert w.run().counters.migrated == 5
    assert sorted(calls) == [(k, None) for k in keys]  # None: ask S3 for the object (a HEAD)


class FailingOnceStore(MemoryCheckpointStore):
    """A checkpoint store whose first save fails (a full disk that then frees up)."""

    def __init__(self):
        super().__init__()
        self.failures = 0

    def save(self, checkpoint):
        if not self.failures:
            self.failures += 1
            raise OSError(28, "No space left on device")
        super().save(checkpoint)


def test_a_checkpoint_that_cannot_be_saved_stops_the_run_after_the_objects_in_progress():
    """The failing save comes on the main thread (every thread busy for longer than a tick):
    the run stops cleanly, with every object it started finished and recorded."""
    keys = [f"k{i}" for i in range(6)]
    started = []

    def process(key, hint):
        started.append(key)
        time.sleep(0.6)
        return ObjectResult(key, Outcome.MIGRATED, "migrated")

    store = FailingOnceStore()
    w = worker(keys, process, store=store, concurrency=2)
    summary = w.run()
    assert store.failures == 1
    assert summary.exit_code == EXIT_INTERRUPTED and "checkpoint" in summary.stopped
    assert summary.counters.scanned == len(started) >= 2
    assert store.saved.counters["migrated"] == len(started) and not store.saved.done


def test_a_refused_thread_stops_the_run_and_the_started_threads_finish(monkeypatch):
    keys = [f"k{i}" for i in range(20)]
    real_start = threading.Thread.start
    count = []

    def start(self):
        if self.name.startswith("rewrap_"):
            count.append(self.name)
            if len(count) == 3:
                raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    w = worker(keys, lambda k, h: (time.sleep(0.01), ObjectResult(k, Outcome.MIGRATED, "migrated"))[1], concurrency=4)
    summary = w.run()
    assert summary.exit_code == EXIT_INTERRUPTED and "could not start thread 3 of 4" in summary.stopped
    assert summary.counters.failed == 0 and summary.counters.scanned == summary.counters.migrated

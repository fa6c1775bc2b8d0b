"""Builds a prefix migration from options and runs it. Shared by the CLI and the Kubernetes
Job (which runs the CLI): nothing here is CLI-only."""
from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

from keymigration.aws.clients import ClientOptions, Telemetry, make_clients
from keymigration.aws.kms import KmsKeys
from keymigration.aws.s3 import Bucket
from keymigration.errors import KeyMigrationError, KmsError, ObjectError, SetupError, Unavailable
from keymigration.formats.envelope import WrapAlgorithm
from keymigration.formats.source_keys import load_key_files
from keymigration.formats.vocabulary import (
    BACKUP_SUFFIX,
    DEFAULT_INSTRUCTION_SUFFIX,
    DEFAULT_SAMPLE_RATE,
    Mode,
    VerifyLevel,
    check_sample_rate,
    check_target,
)
from keymigration.migrate.checkpoint import (
    Checkpoint,
    CheckpointStore,
    FileCheckpointStore,
)
from keymigration.migrate.inventory import InventorySource, load_manifest, select_files
from keymigration.migrate.kms_budget import KmsBudget
from keymigration.migrate.progress import JsonProgress, MultiProgress, TerminalProgress
from keymigration.migrate.reader import decrypt_object
from keymigration.migrate.report import ReportWriter
from keymigration.migrate.results import ListingHint, ObjectResult, Outcome
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions
from keymigration.migrate.sources import KeyRange, ListingSource, ObjectSource
from keymigration.migrate.worker import (
    EXIT_CONFIG,
    PrefixWorker,
    ProgressSink,
    Summary,
    WorkerOptions,
)

log = logging.getLogger("keymigration")

@dataclass
class RunOptions:
    """Everything one prefix migration needs; the CLI flags and the Job arguments map 1:1."""

    bucket: str
    prefix: str
    kms_key_id: str
    source_key_files: list[str] = field(default_factory=list)
    source_kms_key_ids: list[str] = field(default_factory=list)
    suffix: str = DEFAULT_INSTRUCTION_SUFFIX
    wrap: str = "kms+context"
    # The caller's pairs of the new KMS context for AES/RSA sources (KMS sources keep theirs).
    encryption_context: dict[str, str] = field(default_factory=dict)
    grant_tokens: list[str] = field(default_factory=list)  # sent with every KMS request
    mode: Mode = Mode.INSTRUCTION_FILE
    concurrency: int = 16
    kms_rate: float | None = None
    verify: VerifyLevel = VerifyLevel.ENVELOPE
    verify_sample_rate: float = DEFAULT_SAMPLE_RATE  # --verify sample: the share KMS opens
    checkpoint: str | None = None
    report: str | None = None
    max_failures: int | None = None
    dry_run: bool = False
    clients: ClientOptions = field(default_factory=ClientOptions)
    progress: str = "auto"  # auto | bar | json | none
    count_total: bool = True
    # NAMESPACE/NAME of a KeyMigrationProgress (in a Job). The CLI turns it into the checkpoint
    # store and progress sink it hands to Migration; nothing here imports Kubernetes code.
    progress_resource: str | None = None
    checkpoint_interval: float = 2.0
    # Writes are confirmed by re-listing a page of them: 1,000, or what gathered in this long.
    confirm_interval: float = 2.0
    # A shard: only keys start_after < key <= end_key (docs/scale.md).
    start_after: str | None = None
    end_key: str | None = None
    # An S3 Inventory instead of a listing: s3://bucket/path/manifest.json, and which data files.
    inventory: str | None = None
    inventory_files: str | None = None
    # A file whose number, when it changes, becomes the KMS rate cap (needs kms_rate).
    kms_rate_file: str | None = None


def _progress(kind: str, description: str) -> ProgressSink | None:
    if kind == "auto":
        kind = "bar" if sys.stderr.isatty() else "json"
    if kind == "bar":
        return TerminalProgress(description)
    if kind == "json":
        return JsonProgress()
    return None


def _wrap(value: str) -> WrapAlgorithm:
    if value not in ("kms", "kms+context"):
        raise SetupError(f"--wrap must be kms+context or kms, not {value!r}")
    return WrapAlgorithm(value)


class Migration:
    """One prefix: clients, keys, checkpoint, report, worker. ``run()`` returns a Summary."""

    def __init__(
        self,
        options: RunOptions,
        *,
        store: CheckpointStore | None = None,
        extra_progress: ProgressSink | None = None,
        clients=None,
    ):
        self.options = options
        options.mode = check_target(options.mode, options.suffix)
        options.verify = VerifyLevel.parse(options.verify)
        options.verify_sample_rate = check_sample_rate(options.verify_sample_rate)
        self.telemetry = Telemetry()
        self.s3, self.kms_client = clients or make_clients(options.clients, self.telemetry)
        self.source_keys = load_key_files(options.source_key_files)
        try:
            self.key_range = KeyRange(options.start_after, options.end_key)
            self.kms_budget = KmsBudget(options.kms_rate, options.kms_rate_file)
        except ValueError as error:
            raise SetupError(str(error)) from None
        self.kms_budget.attach(self.kms_client)
        self.kms = KmsKeys(
            self.kms_client,
            options.kms_key_id,
            _wrap(options.wrap),
            options.source_kms_key_ids,
            self.kms_budget.limiter,
            encryption_context=options.encryption_context,
            grant_tokens=options.grant_tokens,
        )
        self.source: ObjectSource | None = None
        self.inventory_md5: str | None = None
        self.store = store or (FileCheckpointStore(options.checkpoint) if options.checkpoint else None)
        self.extra_progress = extra_progress

    def _checkpoint(self) -> Checkpoint:
        s = self.options
        try:
            existing = self.store.load() if self.store else None
        except KeyMigrationError:
            raise
        except Exception as error:  # the store is unreachable: do not start blind, but try again later
            raise Unavailable(f"cannot read the checkpoint: {type(error).__name__}: {error}"[:1000]) from None
        scale = {
            "start_after": s.start_after,
            "end_key": s.end_key,
            "inventory": s.inventory,
            "inventory_md5": self.inventory_md5,
            "inventory_files": s.inventory_files,
        }
        if existing is None:
            return Checkpoint(s.bucket, s.prefix, s.suffix, s.kms_key_id, mode=s.mode, **scale)
        existing.check_matches(s.bucket, s.prefix, s.suffix, s.kms_key_id, s.mode, **scale)
        return existing

    def _source(self) -> ObjectSource:
        """The listing of the prefix (or of its key range), or the inventory's rows."""
        s = self.options
        files = sorted({DEFAULT_INSTRUCTION_SUFFIX, s.suffix})
        if not s.inventory:
            return ListingSource(self.s3, s.bucket, s.prefix, files, (BACKUP_SUFFIX,), key_range=self.key_range)
        manifest = load_manifest(self.s3, s.inventory)
        self.inventory_md5 = manifest.md5
        chosen = select_files(len(manifest.files), s.inventory_files)
        return InventorySource(self.s3, manifest, s.bucket, s.prefix, [*files, BACKUP_SUFFIX], chosen, self.key_range)

    def _extra(self) -> dict:
        extra = {
            "kms_requests": dict(self.kms.calls),
            "requests": self.telemetry.requests(),
            "faults_retried": self.telemetry.faults(),
            **self.kms_budget.summary(),
        }
        if self.key_range.bounded:
            extra["key_range"] = self.key_range.as_dict()
        if isinstance(self.source, InventorySource):
            extra.update(self.source.summary())
        return extra

    def preflight(self, needs_target: bool = True) -> None:
        # A dry run resolves the target too when one is given (a read-only DescribeKey): the
        # instruction files' markers carry its ARN, so a plan recognises migrated objects.
        if needs_target and (self.options.kms_key_id or not self.options.dry_run):
            try:
                self.kms.describe_target()
            except KmsError as error:
                # Throttling, 5xx, no credentials yet, an unreachable endpoint: try again later.
                # Access denied, no such key, a disabled key: the configuration must change.
                raise (Unavailable if error.retryable else SetupError)(f"target KMS key: {error}") from None


    def run(
        self,
        process_factory: Callable[["Migration"], Callable] | None = None,
        description: str = "migrating",
        needs_target: bool = True,
    ) -> Summary:
        s = self.options
        self.source = self._source()
        checkpoint = self._checkpoint()
        self.preflight(needs_target)
        rewrapper = ObjectRewrapper(
            self.s3,
            self.kms,
            self.source_keys,
            RewrapOptions(
                s.bucket, suffix=s.suffix, verify=s.verify, dry_run=s.dry_run, run_id=checkpoint.run_id, mode=s.mode,
                sample_rate=s.verify_sample_rate,
            ),
        )
        # A listing is re-listed page by page to confirm the writes (an inventory: a HEAD each).
        rewrapper.defer_confirmation = isinstance(self.source, ListingSource)
        process = process_factory(self) if process_factory else rewrapper.process
        report = ReportWriter.open(s.report)
        sinks = MultiProgress(_progress(s.progress, f"{description} s3://{s.bucket}/{s.prefix}"), self.extra_progress)
        worker = PrefixWorker(
            self.s3,
            process,
            WorkerOptions(
                bucket=s.bucket,
                prefix=s.prefix,
                concurrency=s.concurrency,
                max_failures=s.max_failures,
                file_suffixes=sorted({DEFAULT_INSTRUCTION_SUFFIX, s.suffix}),
                skip_suffixes=(BACKUP_SUFFIX,),
                count_total=s.count_total and not s.inventory,
                checkpoint_interval=s.checkpoint_interval,
                confirm_interval=s.confirm_interval,
            ),
            checkpoint,
            # A dry run never moves a real checkpoint.
            store=None if s.dry_run else self.store,
            report=report,
            progress=sinks,
            extra_summary=self._extra,
            source=self.source,
        )
        self.worker = worker
        self.kms_budget.start()
        with _stop_on_signals(worker):
            try:
                return worker.run()
            finally:
                self.kms_budget.stop()
                if report:
                    report.close()


class _stop_on_signals:
    """SIGTERM (pod deletion, Job suspension) and SIGINT stop submitting, finish in-flight
    objects, write the checkpoint and exit with EXIT_INTERRUPTED."""

    def __init__(self, worker: PrefixWorker):
        self.worker = worker
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, lambda *_: self.worker.request_stop("signal"))
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def verify_process(migration: Migration, lookup_suffix: str | None) -> Callable[[str, ListingHint], ObjectResult]:
    """Per object: read it with only the KMS key (``verify`` command)."""
    bucket = Bucket(migration.s3, migration.options.bucket)

    def verify_one(key: str, hint: ListingHint) -> ObjectResult:
        result = ObjectResult(key, Outcome.FAILED, "unreadable")
        try:
            length = sum(len(piece) for piece in decrypt_object(bucket, migration.kms, key, lookup_suffix))
        except ObjectError as error:
            result.fail(error)
            if error.reason == "not-encrypted":
                result.outcome = Outcome.SKIPPED
        else:
            result.outcome, result.reason, result.message = Outcome.VERIFIED, "readable", f"{length} bytes"
        return result

    return verify_one


__all__ = ["Migration", "RunOptions", "SetupError", "EXIT_CONFIG", "verify_process"]

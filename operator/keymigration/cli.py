"""The ``keymigration`` command: run, plan, verify, demo (and operator)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from keymigration import Mode, SetupError, Unavailable, VerifyLevel, __version__
from keymigration.aws import ClientOptions
from keymigration.formats import DEFAULT_SAMPLE_RATE, reader_warnings
from keymigration.kube import InstallConfig, WorkerAws
from keymigration.logs import setup_logging
from keymigration.migrate import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RETRY,
    DurationEstimate,
    Migration,
    Prune,
    Rollback,
    RollbackOptions,
    RunOptions,
    human_duration,
    plan_shards,
    verify_process,
)

log = logging.getLogger("keymigration")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _context_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("must be KEY=VALUE")
    return key, value


def _context(pairs: list[tuple[str, str]]) -> dict[str, str]:
    context: dict[str, str] = {}
    for key, value in pairs:
        if key in context:
            raise SetupError(f"--encryption-context: {key!r} is given twice")
        context[key] = value
    return context


def _add_where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("what to migrate")
    where.add_argument("--bucket", required=True)
    where.add_argument("--prefix", default="", help="key prefix (default: the whole bucket)")
    where.add_argument("--suffix", default=".instruction", help="instruction-file suffix, with its dot (default .instruction)")
    where.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default="instruction-file",
        help="instruction-file: write <key><suffix> only (readers told to read it first use it; the others keep the "
        "old envelope in the metadata); cutover: also remove the old envelope from the object's metadata, so readers "
        "that read KMS envelopes from instruction files find <key>.instruction (not .NET); metadata: replace the old "
        "envelope in the object's metadata with the KMS envelope (an old <key>.instruction is backed up and removed), "
        "where every reader looks first (docs/cutover.md)",
    )
    scale = parser.add_argument_group("a shard of the prefix, or an inventory instead of a listing (docs/scale.md)")
    scale.add_argument("--start-after", metavar="KEY", default=None,
                       help="only keys after KEY (a shard's start_after; use --start-after=KEY for a KEY starting with '-')")
    scale.add_argument("--end-key", metavar="KEY", default=None, help="only keys up to and including KEY (a shard's end_key)")
    scale.add_argument("--inventory", metavar="S3_URL",
                       help="the objects an S3 Inventory lists (s3://BUCKET/PATH/manifest.json, CSV) instead of a listing")
    scale.add_argument("--inventory-files", metavar="SPEC",
                       help="this worker's data files of the inventory: I/N (every N-th from the I-th), A-B, A; comma-separated")


def _add_keys(parser: argparse.ArgumentParser, target_required: bool) -> None:
    keys = parser.add_argument_group("keys")
    keys.add_argument(
        "--source-key",
        action="append",
        default=[],
        metavar="FILE[:MATDESC_JSON]",
        help="old AES key (raw or base64) or RSA private key (PEM); repeat for several; "
        "':{\"k\":\"v\"}' pins the key to that materials description",
    )
    keys.add_argument("--source-kms-key-id", action="append", default=[], metavar="ID", help="old KMS key (KMS-to-KMS)")
    keys.add_argument("--kms-key-id", required=target_required, help="target KMS key: key id, ARN or alias")
    keys.add_argument("--wrap", default="kms+context", choices=("kms+context", "kms"), help="target wrap (default kms+context)")
    keys.add_argument(
        "--encryption-context",
        action="append",
        default=[],
        type=_context_pair,
        metavar="KEY=VALUE",
        help="a pair of the new envelope's KMS encryption context for objects wrapped by AES/RSA keys (repeat for "
        "several; readers must then pass it). Objects wrapped by KMS keep their own caller context",
    )
    keys.add_argument(
        "--grant-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="KMS grant token sent with every KMS request (repeat for several, at most 10)",
    )


def _add_how(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("how")
    run.add_argument("--concurrency", type=_positive_int, default=16, help="objects in flight (default 16)")
    run.add_argument("--kms-rate", type=_positive_float, default=None, metavar="REQ_PER_S",
                     help="cap on KMS requests per second; the rate backs off on throttling and grows back to the cap")
    run.add_argument("--kms-rate-file", metavar="FILE",
                     help="re-read this file (a number of requests per second) while running: a new KMS rate cap")
    run.add_argument("--checkpoint", metavar="FILE", help="resume from / record progress in this file")
    run.add_argument("--checkpoint-interval", type=_non_negative_float, default=2.0, metavar="SECONDS",
                     help="at most one checkpoint write per SECONDS (default 2; 0 writes after every object)")
    run.add_argument("--report", metavar="FILE", help="JSON-lines report, one line per object ('-' for stdout)")
    run.add_argument("--max-failures", type=_positive_int, default=None, metavar="N", help="stop after N failed objects")
    run.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
    run.add_argument("--no-count", dest="count_total", action="store_false", help="do not count the prefix first (no ETA)")
    run.add_argument(
        "--progress-resource",
        metavar="NAMESPACE/NAME",
        help="keep the checkpoint and progress in this KeyMigrationProgress object (what operator Jobs do)",
    )


def _add_aws(parser: argparse.ArgumentParser) -> None:
    aws = parser.add_argument_group("AWS")
    aws.add_argument("--endpoint-url", help="S3 and KMS endpoint (else AWS_ENDPOINT_URL[_S3|_KMS])")
    aws.add_argument("--region")
    aws.add_argument("--path-style", action="store_true", help="path-style S3 addressing (S3-compatible stores)")
    aws.add_argument("--retry-mode", choices=("standard", "adaptive"), default="standard")
    aws.add_argument("--max-attempts", type=_positive_int, default=_positive_int(os.environ.get("AWS_MAX_ATTEMPTS") or "10"),
                     help="botocore attempts per request (default: AWS_MAX_ATTEMPTS, else 10)")


def _add_common(parser: argparse.ArgumentParser, target_required: bool = True) -> None:
    _add_where(parser)
    _add_keys(parser, target_required)
    _add_how(parser)
    _add_aws(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keymigration",
        description="Re-wrap S3 Encryption Client data keys under AWS KMS by writing instruction files.",
    )
    parser.add_argument("--version", action="version", version=f"keymigration {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="migrate every object under a prefix")
    _add_common(run)
    run.add_argument(
        "--verify", choices=[v.value for v in VerifyLevel], default=VerifyLevel.ENVELOPE.value,
        help="what is proven before a new envelope is written: envelope (default): KMS opens every new envelope; "
        "sample: every envelope checked locally, KMS opens the first and a share (--verify-sample-rate) of the rest; "
        "body: also decrypt every body; none: the unwrap's own proof only (docs/worker.md#verification)",
    )
    run.add_argument("--verify-sample-rate", type=float, default=DEFAULT_SAMPLE_RATE, metavar="SHARE",
                     help=f"--verify sample: the share of objects KMS opens the new envelope of (0-1, default {DEFAULT_SAMPLE_RATE})")
    run.add_argument("--dry-run", action="store_true", help="report what would be done; no KMS calls, no writes")

    plan = sub.add_parser("plan", help="what `run` would do: counts by format, wrap, location, key, and how long; writes nothing")
    _add_common(plan, target_required=False)
    estimate = plan.add_argument_group("expected duration")
    estimate.add_argument("--workers", type=_positive_int, default=1, help="worker processes (shards) running at once (default 1)")
    estimate.add_argument("--worker-rate", type=_positive_float, default=None, metavar="OBJ_PER_S",
                          help="objects/s of one worker (default: the rate measured by bench/scale_bench.py, docs/scale.md)")
    estimate.add_argument("--kms-budget", type=_positive_float, default=None, metavar="REQ_PER_S",
                          help="KMS requests/s for the whole migration (default: --kms-rate x --workers, else no limit)")
    estimate.add_argument("--planned-verify", choices=[v.value for v in VerifyLevel], default=VerifyLevel.ENVELOPE.value,
                          help="the --verify level the run will use (KMS requests and rate per object)")

    shard = sub.add_parser("shard", help="plan key ranges of a prefix by sampling its listing; prints one JSON range a line")
    _add_shard(shard)

    verify = sub.add_parser("verify", help="read every object with only the target KMS key")
    _add_common(verify)
    verify.add_argument(
        "--lookup",
        choices=("explicit", "default"),
        default="explicit",
        help="explicit: read <key><suffix> like Ruby/Go v1/Java v1 with a suffix; "
        "default: metadata first, then <key>.instruction, like Java S3EC v3/v4, Python v4, Go S3EC",
    )

    rollback = sub.add_parser("rollback", help="put the old envelopes back from the migration's backups")
    _add_where(rollback)
    _add_how(rollback)
    _add_aws(rollback)
    rollback.add_argument("--remove-instruction-files", action="store_true",
                          help="also delete keymigration's KMS instruction files where the old envelope is back in the metadata")
    rollback.add_argument("--dry-run", action="store_true", help="report what would be restored; change nothing")

    prune = sub.add_parser("prune-backups", help="delete the backups of migrated objects, once you confirm the migration")
    _add_where(prune)
    prune.add_argument("--kms-key-id", required=True, help="target KMS key: a backup is deleted only if the object opens with it")
    _add_how(prune)
    _add_aws(prune)
    prune.add_argument("--confirm", action="store_true", help="really delete (without it: report what would be deleted)")

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeat for several)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    op.add_argument("--liveness", default=os.environ.get("KEYMIGRATION_LIVENESS", "http://0.0.0.0:8080/healthz"),
                    help="kopf liveness endpoint ('' to disable)")
    op.add_argument("--worker-image", default=os.environ.get("KEYMIGRATION_WORKER_IMAGE", InstallConfig.worker_image))
    op.add_argument("--worker-service-account",
                    default=os.environ.get("KEYMIGRATION_WORKER_SERVICE_ACCOUNT", InstallConfig.worker_service_account))
    op.add_argument("--image-pull-policy", default=os.environ.get("KEYMIGRATION_IMAGE_PULL_POLICY", InstallConfig.image_pull_policy),
                    choices=("Always", "IfNotPresent", "Never"))
    op.add_argument("--backoff-limit", type=int, default=int(os.environ.get("KEYMIGRATION_BACKOFF_LIMIT", InstallConfig.backoff_limit)))
    op.add_argument("--job-ttl-seconds", type=int, default=int(os.environ.get("KEYMIGRATION_JOB_TTL_SECONDS", 7 * 24 * 3600)),
                    help="ttlSecondsAfterFinished of worker Jobs (-1: never delete)")
    op.add_argument("--worker-resources", default=os.environ.get("KEYMIGRATION_WORKER_RESOURCES"),
                    help="default worker resources as JSON ({\"requests\": {...}, \"limits\": {...}})")
    op.add_argument("--worker-env-secret", default=os.environ.get("KEYMIGRATION_WORKER_ENV_SECRET") or None,
                    help="Secret (in each KeyMigration's namespace) whose keys become worker environment variables, "
                    "e.g. static AWS credentials where IRSA/Pod Identity are not available")
    op.add_argument("--allowed-priority-classes", default=os.environ.get("KEYMIGRATION_ALLOWED_PRIORITY_CLASSES"),
                    help="JSON list of the priorityClassNames a KeyMigration's spec.worker may name (default: none)")
    op.add_argument("--allowed-tolerations", default=os.environ.get("KEYMIGRATION_ALLOWED_TOLERATIONS"),
                    help="JSON list of the tolerations a KeyMigration's spec.worker may use, each equal to one of "
                    "these (default: none)")
    op.add_argument("--worker-aws", default=os.environ.get("KEYMIGRATION_WORKER_AWS"),
                    help="JSON object: the workers' AWS region, s3EndpointUrl, kmsEndpointUrl, pathStyle, and per-namespace "
                    "overrides under \"namespaces\" (default: the workers' environment); never a KeyMigration's")
    op.add_argument("--allowed-kms-keys", default=os.environ.get("KEYMIGRATION_ALLOWED_KMS_KEYS"),
                    help="JSON list of KMS key or alias ARNs (shell patterns) a KeyMigration may name (default: any)")
    op.add_argument("--allowed-kms-accounts", default=os.environ.get("KEYMIGRATION_ALLOWED_KMS_ACCOUNTS"),
                    help="JSON list of AWS account ids whose KMS keys a KeyMigration may name, by ARN (default: any)")
    op.add_argument("--status-interval", type=float, default=3.0, help="minimum seconds between status writes per KeyMigration")
    op.add_argument("--metrics-port", type=int, default=int(os.environ.get("KEYMIGRATION_METRICS_PORT", 9090)),
                    help="Prometheus /metrics port, separate from the liveness endpoint (0: off)")
    op.add_argument("--stall-seconds", type=float, default=float(os.environ.get("KEYMIGRATION_STALL_SECONDS", 900)),
                    help="keymigration_stalled is 1 after this long without object progress while Reconciling")
    op.add_argument("--stuck-seconds", type=float, default=float(os.environ.get("KEYMIGRATION_STUCK_SECONDS", 30)),
                    help="a worker Job without a running pod this long makes the KeyMigration Stalled (WorkerStuck), "
                    "naming the cause (FailedCreate, FailedMount, Unschedulable, ImagePullBackOff, ...)")

    demo = sub.add_parser("demo", help="the whole job on embedded S3 and KMS stand-ins (no cloud)")
    demo.add_argument("--objects", type=_positive_int, default=1500)
    demo.add_argument("--concurrency", type=_positive_int, default=16)
    demo.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
    return parser


def _add_shard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="", help="key prefix (default: the whole bucket)")
    parser.add_argument("--suffix", default=".instruction", help="instruction-file suffix: such keys are not objects")
    count = parser.add_mutually_exclusive_group(required=True)
    count.add_argument("--shards", type=_positive_int, help="this many ranges (fewer if the prefix has fewer objects)")
    count.add_argument("--objects-per-shard", type=_positive_int, metavar="N", help="ranges of about N objects each")
    parser.add_argument("--max-requests", type=_positive_int, default=None,
                        help="ListObjectsV2 requests the sampling may make (default 200 + 20 per shard)")
    parser.add_argument("--progress-resource", metavar="NAMESPACE/NAME",
                        help="record the boundaries in this KeyMigrationProgress object, once (what the operator's planner "
                        "Jobs do): a plan already recorded there is kept and printed, never replaced")
    _add_aws(parser)


def run_shard_command(args: argparse.Namespace) -> int:
    """One JSON object per line: {"start_after", "end_key", "estimated_objects"}; a summary on stderr.
    With ``--progress-resource``, the plan is recorded there (once)."""
    if not args.progress_resource:
        _plan_and_print(args)
        return EXIT_OK
    from keymigration.kube import KubernetesProgress

    store: KubernetesProgress | None = None
    try:
        store = KubernetesProgress(args.progress_resource)
        recorded = store.shard_plan()
        if recorded is not None:
            log.info("a shard plan is already recorded in %s (%d shards): kept", args.progress_resource,
                     len(recorded.get("boundaries") or ()) + 1)
            return EXIT_OK
        plan = _plan_and_print(args)
        bounds = [shard.key_range.end_key for shard in plan.shards[:-1]]
        store.record_shard_plan(bounds, [s.estimated_objects for s in plan.shards], plan.estimated_objects, plan.exact, plan.requests)
    except SetupError as error:
        log.error("%s", error)
        return _failed_to_start(error, EXIT_CONFIG, {"extra_progress": store} if store else {})
    except Unavailable as error:
        log.error("cannot plan yet: %s", error)
        return _failed_to_start(error, EXIT_RETRY, {"extra_progress": store} if store else {})
    return EXIT_OK


def _plan_and_print(args: argparse.Namespace):
    from keymigration.aws import make_clients

    s3, _ = make_clients(_client_options(args, concurrency=1))
    plan = plan_shards(
        s3,
        args.bucket,
        args.prefix,
        shards=args.shards,
        objects_per_shard=args.objects_per_shard,
        not_objects=sorted({".instruction", args.suffix, ".keymigration-backup"}),
        max_requests=args.max_requests,
    )
    for shard in plan.shards:
        sys.stdout.write(json.dumps(shard.as_dict(), ensure_ascii=False) + "\n")
    summary = {"event": "shard-plan", "shards": len(plan.shards), "estimated_objects": plan.estimated_objects,
               "exact": plan.exact, "list_requests": plan.requests}
    sys.stderr.write(json.dumps(summary) + "\n")
    return plan


def _client_options(args: argparse.Namespace, concurrency: int) -> ClientOptions:
    return ClientOptions(
        endpoint_url=args.endpoint_url,
        region=args.region,
        concurrency=concurrency,
        retry_mode=args.retry_mode,
        max_attempts=args.max_attempts,
        path_style=args.path_style,
    )


def settings_from_args(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        bucket=args.bucket,
        prefix=args.prefix,
        kms_key_id=getattr(args, "kms_key_id", None) or "",
        source_key_files=getattr(args, "source_key", []),
        source_kms_key_ids=getattr(args, "source_kms_key_id", []),
        suffix=args.suffix,
        wrap=getattr(args, "wrap", "kms+context"),
        encryption_context=_context(getattr(args, "encryption_context", [])),
        grant_tokens=getattr(args, "grant_token", []),
        mode=args.mode,
        concurrency=args.concurrency,
        kms_rate=args.kms_rate,
        verify=getattr(args, "verify", "envelope") if args.command == "run" else "none",
        verify_sample_rate=getattr(args, "verify_sample_rate", DEFAULT_SAMPLE_RATE),
        checkpoint=args.checkpoint,
        report=args.report,
        max_failures=args.max_failures,
        dry_run=args.command == "plan" or (args.command == "run" and args.dry_run),
        progress=args.progress,
        count_total=args.count_total,
        progress_resource=args.progress_resource,
        clients=_client_options(args, args.concurrency),
        start_after=args.start_after,
        end_key=args.end_key,
        inventory=args.inventory,
        inventory_files=args.inventory_files,
        kms_rate_file=getattr(args, "kms_rate_file", None),
        checkpoint_interval=getattr(args, "checkpoint_interval", 2.0),
    )


def _print_summary(summary: dict, stream=sys.stdout) -> None:
    order = ("scanned", "migrated", "planned", "verified", "skipped", "failed")
    width = max(len(k) for k in summary.get("reasons", {}) or {"": 0}) + 2
    stream.write("\n")
    for key in order:
        if summary.get(key) or key in ("scanned", "failed"):
            stream.write(f"  {key:<{width}} {summary.get(key, 0):>10}\n")
    for field, title in (("reasons", "reason"), ("formats", "format/wrap/location"), ("source_keys", "source key")):
        if summary.get(field):
            stream.write(f"  by {title}:\n")
            for name, count in summary[field].items():
                stream.write(f"    {name:<{width}} {count:>8}\n")
    rate = summary.get("objects_per_second")
    stream.write(f"  elapsed {summary.get('elapsed_seconds')} s" + (f", {rate} objects/s" if rate else "") + "\n")
    if summary.get("estimate"):
        _print_estimate(summary["estimate"], stream)
    if summary.get("stopped"):
        stream.write(f"  stopped: {summary['stopped']}\n")


def _estimate(args: argparse.Namespace, plan: dict) -> dict:
    budget = args.kms_budget or (args.kms_rate * args.workers if args.kms_rate else None)
    return DurationEstimate(
        objects=int(plan.get("planned", 0)),
        verify=VerifyLevel.parse(args.planned_verify),
        workers=args.workers,
        worker_rate=args.worker_rate,
        kms_budget=budget,
    ).as_dict()


def _print_estimate(estimate: dict, stream) -> None:
    budget = estimate["kms_budget_per_second"]
    stream.write(
        f"  expected duration {human_duration(estimate['expected_seconds'])} for {estimate['objects']} objects "
        f"({estimate['workers']} worker(s) at {estimate['worker_objects_per_second']} objects/s; "
        f"{estimate['kms_requests']} KMS requests" + (f" at {budget}/s" if budget else ", no KMS budget") +
        f"; bound by {estimate['bound_by']})\n"
    )


def run_demo_command(args: argparse.Namespace) -> int:
    from keymigration.demo import run_demo

    return run_demo(objects=args.objects, concurrency=args.concurrency, progress=args.progress)


def _json_option(args: argparse.Namespace, name: str, kind: type, default):
    """A JSON-valued operator option (Helm values reach the operator as JSON in its environment)."""
    text = getattr(args, name.replace("-", "_"))
    if not text:
        return default
    try:
        value = json.loads(text)
    except ValueError:
        raise SetupError(f"--{name} is not valid JSON") from None
    if not isinstance(value, kind):
        raise SetupError(f"--{name} must be a JSON {kind.__name__}")
    return value


def install_config(args: argparse.Namespace) -> InstallConfig:
    """What the installer decided (Helm values, as flags or environment variables)."""
    aws = _json_option(args, "worker-aws", dict, {})
    return InstallConfig(
        worker_image=args.worker_image,
        worker_service_account=args.worker_service_account,
        image_pull_policy=args.image_pull_policy,
        backoff_limit=args.backoff_limit,
        ttl_seconds_after_finished=None if args.job_ttl_seconds < 0 else args.job_ttl_seconds,
        default_resources=_json_option(args, "worker-resources", dict, InstallConfig().default_resources),
        worker_env_secret=args.worker_env_secret,
        allowed_priority_classes=tuple(_json_option(args, "allowed-priority-classes", list, [])),
        allowed_tolerations=tuple(_json_option(args, "allowed-tolerations", list, [])),
        aws=WorkerAws.from_fields(aws),
        namespace_aws={namespace: WorkerAws.from_fields(fields) for namespace, fields in (aws.get("namespaces") or {}).items()},
        allowed_kms_keys=tuple(_json_option(args, "allowed-kms-keys", list, [])),
        allowed_kms_accounts=tuple(str(a) for a in _json_option(args, "allowed-kms-accounts", list, [])),
    )


def run_operator_command(args: argparse.Namespace) -> int:
    from keymigration.kube.operator import OperatorOptions, run_operator

    try:
        config = install_config(args)
    except SetupError as error:
        log.error("%s", error)
        return EXIT_CONFIG
    if not args.namespace and not args.all_namespaces:
        log.error("give --namespace NS (repeatable) or --all-namespaces")
        return EXIT_CONFIG
    settings = OperatorOptions(config=config, status_interval=args.status_interval, metrics_port=args.metrics_port or None,
                               stall_seconds=args.stall_seconds, stuck_seconds=args.stuck_seconds)
    run_operator(settings, args.namespace, args.all_namespaces, args.liveness or None)
    return EXIT_OK


def _warn_about_readers(settings: RunOptions) -> None:
    """Known readers this migration leaves unable to read with only the target key
    (docs/formats.md, "Which reader reads a migrated object")."""
    for warning in reader_warnings(settings.mode, settings.wrap, settings.suffix):
        log.warning("reader: %s", warning)


def _progress_channel(settings: RunOptions) -> dict:
    """In a Job, the checkpoint and progress live in a KeyMigrationProgress object: the CLI is
    the one place that hands that Kubernetes store to a migration."""
    resource = settings.progress_resource
    if not resource:
        return {}
    from keymigration.kube import KubernetesProgress

    try:
        channel = KubernetesProgress(resource)
    except Exception as error:
        raise SetupError(f"progress resource {resource}: {type(error).__name__}: {error}") from None
    settings.checkpoint_interval = max(settings.checkpoint_interval, KubernetesProgress.LIVE_INTERVAL)
    return {"store": channel, "extra_progress": channel}


def _finish_message(text: str) -> None:
    """The pod's termination message (``KEYMIGRATION_TERMINATION_LOG``, set by the Job to its
    terminationMessagePath): what the operator shows when the worker could not say it itself."""
    path = os.environ.get("KEYMIGRATION_TERMINATION_LOG")
    if not path or not text:
        return
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text[:4000])
    except OSError:
        log.debug("could not write the termination message", exc_info=True)


def _run_migration(args: argparse.Namespace, settings: RunOptions, channel: dict) -> int:
    migration = Migration(settings, **channel)
    store = channel.get("store")
    if store is not None and migration.kms_budget.adaptive is not None:
        # The operator's share of the migration's KMS budget, read back from the progress object.
        store.on_kms_rate = migration.kms_budget.set_cap
    if args.command == "verify":
        suffix = settings.suffix if args.lookup == "explicit" else None
        summary = migration.run(lambda m: verify_process(m, suffix), description="verifying")
    elif args.command == "rollback":
        rollback = RollbackOptions(settings.bucket, settings.suffix, args.remove_instruction_files, args.dry_run)
        summary = migration.run(lambda m: Rollback(m.s3, rollback).process, description="rolling back", needs_target=False)
    elif args.command == "prune-backups":
        summary = migration.run(
            lambda m: Prune(m.s3, m.kms, settings.bucket, args.confirm, settings.suffix).process, description="pruning"
        )
    else:
        _warn_about_readers(settings)
        summary = migration.run(description="planning" if args.command == "plan" else "migrating")
    data = summary.as_dict()
    if args.command == "plan":
        data["estimate"] = _estimate(args, data)
    if args.report != "-":
        _print_summary(data)
    if args.command == "plan":
        sys.stdout.write(json.dumps({"plan": data}, ensure_ascii=False) + "\n")
    if summary.exit_code != EXIT_OK:
        _finish_message(data.get("stopped") or f"{data.get('failed', 0)} objects failed; see the report")
    return summary.exit_code if summary.exit_code != EXIT_OK or args.command != "plan" else EXIT_OK


def _failed_to_start(error: Exception, code: int, channel: dict) -> int:
    """Nothing was done: say why in the log, the termination message and, when the API server
    answers, the progress object, then exit with ``code``."""
    message = str(error) if isinstance(error, (SetupError, Unavailable)) else f"unexpected {type(error).__name__}: {error}"
    _finish_message(message)
    sink = channel.get("extra_progress")
    if sink is not None:
        sink.failed(message, code)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return EXIT_CONFIG if exit_.code == 2 else int(exit_.code or 0)  # 2: a usage error (argparse)
    setup_logging(args.log_format, args.log_level)
    standalone = {"demo": run_demo_command, "operator": run_operator_command, "shard": run_shard_command}
    if args.command in standalone:
        try:
            return standalone[args.command](args)
        except SetupError as error:
            log.error("%s", error)
            return EXIT_CONFIG
    channel: dict = {}
    try:
        settings = settings_from_args(args)
        channel = _progress_channel(settings)
        return _run_migration(args, settings, channel)
    except SetupError as error:
        log.error("%s", error)
        return _failed_to_start(error, EXIT_CONFIG, channel)
    except Unavailable as error:
        log.error("cannot start yet: %s", error)
        return _failed_to_start(error, EXIT_RETRY, channel)
    except Exception as error:  # a bug or an unforeseen failure: never the exit code of a deliberate outcome
        log.exception("unexpected error")
        return _failed_to_start(error, EXIT_RETRY, channel)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

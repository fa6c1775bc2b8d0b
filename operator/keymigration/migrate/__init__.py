"""The migration engine: what happens to one object (re-wrap, cut-over, verify, rollback,
prune), and how a prefix is worked through (listing, worker pool, checkpoints, report,
progress). Knows nothing of Kubernetes: the CLI hands it a checkpoint store and progress sink."""

from keymigration.migrate.checkpoint import Checkpoint, CheckpointStore, FileCheckpointStore, MemoryCheckpointStore
from keymigration.migrate.estimate import DurationEstimate, human_duration
from keymigration.migrate.inventory import InventoryError
from keymigration.migrate.kms_budget import KmsBudget
from keymigration.migrate.report import Counters, ReportWriter
from keymigration.migrate.results import ListingHint, ObjectResult, Outcome
from keymigration.migrate.rewrap import ObjectRewrapper, RewrapOptions
from keymigration.migrate.rollback import Prune, Rollback, RollbackOptions
from keymigration.migrate.runner import Migration, RunOptions, verify_process
from keymigration.migrate.shards import Shard, ShardPlan, plan_shards
from keymigration.migrate.sources import KeyRange
from keymigration.migrate.worker import (
    EXIT_CONFIG,
    EXIT_FAILED_OBJECTS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RETRY,
    EXIT_TOO_MANY_FAILURES,
    PrefixWorker,
    ProgressSink,
    Summary,
    WorkerOptions,
)

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED_OBJECTS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RETRY",
    "EXIT_TOO_MANY_FAILURES",
    "Checkpoint",
    "CheckpointStore",
    "Counters",
    "DurationEstimate",
    "FileCheckpointStore",
    "InventoryError",
    "KeyRange",
    "KmsBudget",
    "ListingHint",
    "MemoryCheckpointStore",
    "Migration",
    "ObjectResult",
    "ObjectRewrapper",
    "Outcome",
    "PrefixWorker",
    "ProgressSink",
    "Prune",
    "ReportWriter",
    "RewrapOptions",
    "Rollback",
    "RollbackOptions",
    "RunOptions",
    "Shard",
    "ShardPlan",
    "Summary",
    "WorkerOptions",
    "human_duration",
    "plan_shards",
    "verify_process",
]

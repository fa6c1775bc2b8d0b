"""Prometheus metrics of the operator, on their own HTTP endpoint (not kopf's liveness port).

Migration metrics are computed at scrape time from what the last reconcile of each KeyMigration
saw (its status and its progress objects), so they always equal the status. Labels are bounded:
namespace, migration, outcome/state/phase/kind from fixed sets, and ``prefix`` only for prefixes
whose Job is running (at most ``maxJobs``, itself capped at 100). Never any object key or key
material.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

OUTCOMES = ("scanned", "migrated", "skipped", "failed")
PREFIX_STATES = ("pending", "running", "suspended", "completed", "failed")
PHASES = ("Pending", "Running", "Suspended", "Succeeded", "CompletedWithFailures", "Failed", "Stalled", "Invalid")
FAULT_KINDS = ("throttled", "server_errors", "connection_errors")


@dataclass
class Observed:
    status: dict
    faults: dict[str, int]
    rate: float
    running_prefixes: list[dict]
    last_progress: float
    scanned: int = 0


@dataclass(eq=False)  # registered in a CollectorRegistry, which needs it hashable
class MigrationMetrics:
    """The operator's view of every KeyMigration, fed by the reconciler, read by the collector."""

    stall_seconds: float = 900.0
    clock: callable = time.time
    observed: dict[tuple[str, str], Observed] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, namespace: str, name: str, status: dict, progresses: list[dict]) -> None:
        faults = {kind: 0 for kind in FAULT_KINDS}
        rate = 0.0
        running_names = {p["job"] for p in status.get("prefixes", []) if p.get("state") == "Running"}
        for progress in progresses:
            state = progress.get("status") or {}
            for kind in FAULT_KINDS:
                faults[kind] += int((state.get("faults") or {}).get(kind, 0))
            if progress["metadata"]["name"] in running_names:
                rate += float(state.get("rate") or 0.0)
        scanned = int((status.get("totals") or {}).get("scanned", 0))
        now = self.clock()
        with self.lock:
            old = self.observed.get((namespace, name))
            last = now if old is None or scanned != old.scanned else old.last_progress
            self.observed[(namespace, name)] = Observed(
                status=status,
                faults=faults,
                rate=rate,
                running_prefixes=[p for p in status.get("prefixes", []) if p.get("state") == "Running"],
                last_progress=last,
                scanned=scanned,
            )

    def forget(self, namespace: str, name: str) -> None:
        with self.lock:
            self.observed.pop((namespace, name), None)

    def stalled(self, item: Observed) -> bool:
        reconciling = any(
            c.get("type") == "Reconciling" and c.get("status") == "True" for c in item.status.get("conditions", [])
        )
        return reconciling and self.clock() - item.last_progress > self.stall_seconds

    # prometheus_client collector protocol
    def collect(self):
        labels = ["namespace", "migration"]
        objects = CounterMetricFamily("keymigration_objects", "Objects by outcome (equals status.totals)", labels=labels + ["outcome"])
        expected = GaugeMetricFamily("keymigration_objects_expected", "Objects counted in the prefixes so far (for ETA)", labels=labels)
        prefix_objects = CounterMetricFamily(
            "keymigration_prefix_objects", "Objects by outcome, per running prefix", labels=labels + ["prefix", "outcome"]
        )
        prefixes = GaugeMetricFamily("keymigration_prefixes", "Prefixes (one Job each) by state", labels=labels + ["state"])
        phase = GaugeMetricFamily("keymigration_phase", "1 for the migration's current phase", labels=labels + ["phase"])
        ready = GaugeMetricFamily("keymigration_ready", "1 when the Ready condition is True", labels=labels)
        progress = GaugeMetricFamily(
            "keymigration_last_progress_timestamp_seconds", "When the operator last saw the object count move", labels=labels
        )
        stalled = GaugeMetricFamily(
            "keymigration_stalled", "1 when Reconciling but no object progress for the stall threshold", labels=labels
        )
        faults = CounterMetricFamily(
            "keymigration_worker_faults", "Throttles and errors the workers' retries absorbed", labels=labels + ["kind"]
        )
        rate = GaugeMetricFamily("keymigration_worker_objects_per_second", "Sum of the running workers' rates", labels=labels)
        with self.lock:
            items = list(self.observed.items())
        for (namespace, name), item in items:
            base = [namespace, name]
            totals = item.status.get("totals") or {}
            for outcome in OUTCOMES:
                objects.add_metric(base + [outcome], float(totals.get(outcome, 0)))
            expected.add_metric(base, float(totals.get("expected", 0)))
            for prefix, counters in _by_prefix(item.running_prefixes).items():  # a prefix's running shards summed
                for outcome in OUTCOMES:
                    prefix_objects.add_metric(base + [prefix, outcome], float(counters.get(outcome, 0)))
            counts = item.status.get("prefixCounts") or {}
            for state in PREFIX_STATES:
                prefixes.add_metric(base + [state], float(counts.get(state, 0)))
            for name_ in PHASES:
                phase.add_metric(base + [name_], 1.0 if item.status.get("phase") == name_ else 0.0)
            ready.add_metric(base, 1.0 if any(c.get("type") == "Ready" and c.get("status") == "True" for c in item.status.get("conditions", [])) else 0.0)
            progress.add_metric(base, item.last_progress)
            stalled.add_metric(base, 1.0 if self.stalled(item) else 0.0)
            for kind in FAULT_KINDS:
                faults.add_metric(base + [kind], float(item.faults.get(kind, 0)))
            rate.add_metric(base, item.rate)
        yield from (objects, expected, prefix_objects, prefixes, phase, ready, progress, stalled, faults, rate)


def _by_prefix(rows: list[dict]) -> dict[str, dict[str, int]]:
    summed: dict[str, dict[str, int]] = {}
    for row in rows:
        counters = summed.setdefault(row["prefix"], {})
        for outcome, value in (row.get("counters") or {}).items():
            counters[outcome] = counters.get(outcome, 0) + int(value or 0)
    return summed


class OperatorMetrics:
    """The registry behind /metrics: migration metrics plus the reconciler's own."""

    def __init__(self, stall_seconds: float = 900.0):
        self.registry = CollectorRegistry()
        self.migrations = MigrationMetrics(stall_seconds=stall_seconds)
        self.registry.register(self.migrations)
        self.reconciles = Counter(
            "keymigration_reconciles", "Reconcile steps by result", ["result"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "keymigration_reconcile_duration_seconds",
            "Duration of one reconcile step (reads, plan, writes)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.status_writes = Counter("keymigration_status_writes", "KeyMigration status writes", registry=self.registry)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

"""A test-only Job controller + kubelet: runs batch/v1 Jobs of a FakeCluster as local processes.

What it does, reduced from the Job controller and the kubelet:

* polls ``batch/v1`` Jobs (all namespaces or the given ones) every ``poll_interval`` seconds;
* for each Job that is not suspended and not finished, runs the pod template's FIRST container
  as a subprocess: the image's entrypoint ``keymigration`` becomes
  ``[sys.executable, "-m", "keymigration.cli"]`` (see ``entrypoints``);
* env: a small pass-through of the host env (PATH, PYTHONPATH, ...), then ``base_env``,
  then the container's ``env`` (literal values; ``valueFrom.fieldRef`` for pod metadata);
* volumes: ``secret``, ``configMap`` and ``emptyDir`` volumes become temp dirs; every
  ``mountPath`` found in the command, args or env values is rewritten to the temp dir;
  a missing Secret/ConfigMap keeps the pod pending (retried every second), like the kubelet;
* Job status through the ``/status`` subresource: ``startTime``, ``active``, ``ready``,
  ``succeeded``, ``failed``, ``completionTime`` and the conditions ``SuccessCriteriaMet`` +
  ``Complete``, ``FailureTarget`` + ``Failed`` (reasons ``BackoffLimitExceeded``,
  ``PodFailurePolicy``, ``DeadlineExceeded``), ``Suspended``;
* ``spec.podFailurePolicy`` (``FailJob``/``Ignore``/``Count`` on ``onExitCodes`` In/NotIn;
  ``onPodConditions`` DisruptionTarget matches processes killed with ``disruption=True``),
  ``spec.backoffLimit`` (default 6), ``spec.activeDeadlineSeconds``, ``spec.suspend``
  (SIGTERM, then SIGKILL after the pod's ``terminationGracePeriodSeconds`` or ``grace_period``),
  ``spec.ttlSecondsAfterFinished`` (the TTL controller deletes the finished Job);
* a deleted Job's process gets SIGTERM, then SIGKILL.

Like a real cluster, zero counters are omitted from the status (``active``, ``succeeded``,
``failed`` are absent when 0); ``ready`` and ``terminating`` are always present.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import semantics as sem
from .pods import NODE_LABELS, PodWriter, termination_message, unschedulable_reason

if TYPE_CHECKING:
    from .cluster import FakeCluster

logger = logging.getLogger("tests.support.k8s.jobrunner")
JSON = dict[str, Any]

DEFAULT_ENTRYPOINTS: dict[str, list[str]] = {"keymigration": [sys.executable, "-m", "keymigration.cli"]}
PASSTHROUGH_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT", "PYTHONHASHSEED",
                   "COVERAGE_PROCESS_START", "COVERAGE_FILE")


class PodPending(Exception):
    """The pod cannot start yet (e.g. its Secret does not exist): retry later. ``reason`` is the
    container's waiting reason, ``event`` the kubelet's Event (reason, message) about it."""

    reason = "ContainerCreating"

    @property
    def event(self) -> tuple[str, str]:
        return "FailedMount", str(self)


@dataclasses.dataclass
class PodLaunch:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    mounts: dict[str, str]  # mountPath -> local path
    termination_log: str = ""  # the local file behind the container's terminationMessagePath


def _pod_field(fieldpath: str, pod: Mapping[str, Any]) -> str | None:
    meta = pod.get("metadata") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", fieldpath)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2))
    return {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName") or "default",
        "spec.nodeName": "fake-node",
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }.get(fieldpath)


def _rewrite(value: str, mounts: Mapping[str, str]) -> str:
    """Replace mount paths by their local directories in ONE pass (longest mount first), so a
    replacement is never rewritten again (a local directory may itself live under /tmp)."""
    if not mounts:
        return value
    ordered = sorted(mounts, key=len, reverse=True)
    cleaned = {(m.rstrip("/") or "/"): mounts[m] for m in ordered}
    alternatives = "|".join(re.escape(m) for m in cleaned)
    pattern = r"(?<![\w.\-/])(" + alternatives + r")(?=/|$|[^\w.\-])"
    return re.sub(pattern, lambda match: cleaned[match.group(1)], value)


def _decode_mode(mode: Any, default: int) -> int:
    return int(mode) if isinstance(mode, int) else default


def _write_projection(dirpath: pathlib.Path, data: Mapping[str, bytes], items: list[JSON] | None,
                      default_mode: int, what: str, optional: bool) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    if items:
        selected = []
        for item in items:
            if item.get("key") not in data:
                if optional:
                    continue
                noun = "secret key" if what == "secret" else "config key"
                raise PodPending(f'MountVolume.SetUp failed for volume "{dirpath.name}" : references non-existent '
                                 f"{noun}: {item.get('key')}")
            selected.append((item["key"], item.get("path") or item["key"], _decode_mode(item.get("mode"), default_mode)))
    else:
        selected = [(key, key, default_mode) for key in data]
    for key, rel, mode in selected:
        path = dirpath / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(mode)


def expand(text: str, lookup: Callable[[str], str | None]) -> str:
    """The kubelet's expansion of command, args and env values (k8s.io/kubernetes
    third_party/forked/golang/expansion): ``$(NAME)`` becomes the value of a declared variable
    (left as is when undeclared), ``$$`` becomes ``$``, any other ``$`` stays."""
    out: list[str] = []
    cursor = 0
    while cursor < len(text):
        char = text[cursor]
        if char != "$" or cursor + 1 == len(text):
            out.append(char)
            cursor += 1
            continue
        following = text[cursor + 1]
        if following == "$":
            out.append("$")
            cursor += 2
        elif following == "(" and ")" in text[cursor + 2:]:
            end = text.index(")", cursor + 2)
            name = text[cursor + 2:end]
            value = lookup(name)
            out.append(value if value is not None else f"$({name})")
            cursor = end + 1
        else:
            out.append("$" + following)
            cursor += 2
    return "".join(out)


class ContainerConfigError(PodPending):
    """The kubelet cannot build the container's configuration (CreateContainerConfigError)."""

    reason = "CreateContainerConfigError"

    @property
    def event(self) -> tuple[str, str]:
        return "Failed", f"Error: {self}"


def _env_from(container: Mapping[str, Any], namespace: str, read_object) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = read_object(kind, namespace, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind.lower()} "{ref.get("name")}" not found')
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
            else:
                data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    return env


def _declared_env(container: Mapping[str, Any], pod: Mapping[str, Any], namespace: str, read_object) -> dict[str, str]:
    declared = _env_from(container, namespace, read_object)
    for item in container.get("env") or []:
        name = item.get("name")
        if "value" in item:
            declared[name] = expand(str(item["value"]), declared.get)
        elif (item.get("valueFrom") or {}).get("fieldRef"):
            value = _pod_field(item["valueFrom"]["fieldRef"].get("fieldPath", ""), pod)
            if value is not None:
                declared[name] = value
        elif "valueFrom" not in item:
            declared[name] = ""
        # other valueFrom sources (secretKeyRef, resourceFieldRef, ...) are not emulated
    return declared


def build_pod_launch(
        job: Mapping[str, Any],
        pod_name: str,
        workdir: str | os.PathLike[str],
        read_object: Callable[[str, str, str], JSON | None],
        *,
        base_env: Mapping[str, str] | None = None,
        entrypoints: Mapping[str, list[str]] | None = None,
        default_entrypoint: str = "keymigration",
        inherit_env: bool = False,
        pod_uid: str | None = None,
) -> PodLaunch:
    """Turn a Job's pod template into a local command line, env and materialized volumes.

    ``read_object(kind, namespace, name)`` returns a Secret/ConfigMap dict or None.
    Raises :class:`PodPending` when a required Secret/ConfigMap (or key) is missing.
    """
    entrypoints = dict(DEFAULT_ENTRYPOINTS if entrypoints is None else entrypoints)
    meta = job.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    template = (job.get("spec") or {}).get("template") or {}
    pod_spec = template.get("spec") or {}
    containers = pod_spec.get("containers") or []
    if not containers:
        raise ValueError("the pod template has no containers")
    container = containers[0]
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pod = {"metadata": {"name": pod_name, "namespace": namespace, "uid": pod_uid or str(uuid.uuid4()),
                        "labels": dict((template.get("metadata") or {}).get("labels") or {},
                                       **{"job-name": meta.get("name", "")}),
                        "annotations": dict((template.get("metadata") or {}).get("annotations") or {})},
           "spec": pod_spec}

    # Volumes
    volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
    volume_dirs: dict[str, pathlib.Path] = {}
    for vname, volume in volumes.items():
        vdir = workdir / "volumes" / vname
        if "secret" in volume:
            src = volume["secret"] or {}
            optional = bool(src.get("optional"))
            secret = read_object("Secret", namespace, src.get("secretName", ""))
            if secret is None and not optional:
                raise PodPending(f'MountVolume.SetUp failed for volume "{vname}" : secret '
                                 f'"{src.get("secretName")}" not found')
            data = {k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()}
            _write_projection(vdir, data, src.get("items"), _decode_mode(src.get("defaultMode"), 0o644),
                              "secret", optional)
        elif "configMap" in volume:
            src = volume["configMap"] or {}
            optional = bool(src.get("optional"))
            cm = read_object("ConfigMap", namespace, src.get("name", ""))
            if cm is None and not optional:
                raise PodPending(f'MountVolume.SetUp failed for volume "{vname}" : configmap '
                                 f'"{src.get("name")}" not found')
            data = {k: str(v).encode() for k, v in ((cm or {}).get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in ((cm or {}).get("binaryData") or {}).items()})
            _write_projection(vdir, data, src.get("items"), _decode_mode(src.get("defaultMode"), 0o644),
                              "configmap", optional)
        else:
            if "emptyDir" not in volume:
                logger.warning("volume %r: only secret, configMap and emptyDir are emulated; "
                               "using an empty dir", vname)
            vdir.mkdir(parents=True, exist_ok=True)
        volume_dirs[vname] = vdir
    mounts: dict[str, str] = {}
    for vm in container.get("volumeMounts") or []:
        vdir = volume_dirs.get(vm.get("name"))
        if vdir is None:
            raise ValueError(f"volumeMount {vm.get('name')!r} refers to no volume")
        local = vdir / vm["subPath"] if vm.get("subPath") else vdir
        mounts[vm["mountPath"]] = str(local)

    # The termination message file (/dev/termination-log), writable even on a read-only root
    # filesystem: a local file here, its path rewritten like a mount's wherever it appears.
    termination_path = container.get("terminationMessagePath") or "/dev/termination-log"
    termination_log = workdir / "termination-log"
    termination_log.write_text("")
    paths = {**mounts, termination_path: str(termination_log)}

    # The container's declared environment (envFrom, then env, each value expanded with what is
    # declared before it), as the kubelet builds it; only these names expand in command and args.
    declared = _declared_env(container, pod, namespace, read_object)

    # Command line: $(VAR) and $$ expanded with the declared environment, as the kubelet does
    command = [expand(str(c), declared.get) for c in container.get("command") or []]
    args = [expand(str(a), declared.get) for a in container.get("args") or []]
    entry = command[0] if command else default_entrypoint
    prefix = entrypoints.get(os.path.basename(entry))
    if prefix is None:
        raise ValueError(f"container command {entry!r} is not emulated (known: {sorted(entrypoints)})")
    argv = [*prefix, *[_rewrite(c, paths) for c in command[1:]], *[_rewrite(a, paths) for a in args]]

    # Environment of the process: a small pass-through of the host's, HOME and HOSTNAME (the
    # image's and the runtime's), base_env (what the test gives every worker), then the declared.
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = dict(os.environ) if inherit_env else \
        {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    env.update({"HOME": str(home), "HOSTNAME": pod_name})
    if "/tmp" in mounts:
        env["TMPDIR"] = mounts["/tmp"]
    if (job.get("spec") or {}).get("completionMode") == "Indexed":
        env["JOB_COMPLETION_INDEX"] = "0"
    env.update({k: str(v) for k, v in (base_env or {}).items()})
    env.update({k: _rewrite(v, paths) for k, v in declared.items()})
    return PodLaunch(argv=argv, env=env, cwd=str(workdir), mounts=mounts, termination_log=str(termination_log))


@dataclasses.dataclass
class Attempt:
    number: int
    pod_name: str
    log_path: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    exit_code: int | None = None
    term_sent: float | None = None
    grace: float = 10.0
    stop_reason: str | None = None  # suspend | deleted | deadline | shutdown
    disruption: bool = False
    pod: JSON | None = None  # the Pod object in the fake cluster
    started_at: str = ""
    termination_log: str = ""
    policy: str | None = None  # terminationMessagePolicy


@dataclasses.dataclass
class JobState:
    namespace: str
    name: str
    uid: str
    dir: pathlib.Path
    job: JSON
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    failed: int = 0
    succeeded: int = 0
    finished: str | None = None  # Complete | Failed
    finished_at: float | None = None
    conditions: list[JSON] = dataclasses.field(default_factory=list)
    start_time: str | None = None
    completion_time: str | None = None
    pending_reason: str | None = None
    pending_pod: JSON | None = None  # a pod that exists but whose container cannot start yet
    next_try: float = 0.0
    suspended: bool = False
    deleted: bool = False
    last_written: JSON | None = None

    @property
    def running(self) -> Attempt | None:
        last = self.attempts[-1] if self.attempts else None
        return last if last is not None and last.proc is not None and last.exit_code is None else None


class JobRunner:
    """Runs the FakeCluster's Jobs as local processes. Use as a context manager or start()/stop().

    ``namespaces``: None for all namespaces, or a list of namespaces to serve.
    ``base_env``: env vars for every worker (AWS endpoint/credentials, KUBECONFIG, ...).
    ``entrypoints``: container command name -> argv prefix (default: keymigration -> python -m
    keymigration.cli). ``output_limit``: bytes of output kept per attempt.
    ``pullable(image)``: False makes the image's pull fail (ErrImagePull, ImagePullBackOff).
    ``node_labels``: the one node's labels, which a pod's nodeSelector must match to be scheduled.
    ``attempt_env(namespace, job, attempt)``: variables to set (or, with None, remove) for one
    attempt: a worker whose credentials or endpoint are not there yet at its first start.
    """

    def __init__(
            self,
            cluster: "FakeCluster",
            *,
            namespaces: Iterable[str] | None = None,
            base_env: Mapping[str, str] | None = None,
            workdir: str | os.PathLike[str] | None = None,
            entrypoints: Mapping[str, list[str]] | None = None,
            poll_interval: float = 0.2,
            grace_period: float = 10.0,
            retry_delay: float = 0.0,
            output_limit: int = 64 * 1024,
            inherit_env: bool = False,
            honour_ttl: bool = True,
            pullable: Callable[[str], bool] = lambda image: True,
            node_labels: Mapping[str, str] = NODE_LABELS,
            attempt_env: Callable[[str, str, int], Mapping[str, str | None]] | None = None,
    ) -> None:
        self.cluster = cluster
        self.pullable = pullable
        self.node_labels = dict(node_labels)
        self.attempt_env = attempt_env
        self.pods = PodWriter(cluster)
        self.namespaces = list(namespaces) if namespaces is not None else None
        self.base_env = dict(base_env or {})
        self.entrypoints = dict(entrypoints) if entrypoints is not None else dict(DEFAULT_ENTRYPOINTS)
        self.poll_interval = poll_interval
        self.grace_period = grace_period
        self.retry_delay = retry_delay
        self.output_limit = output_limit
        self.inherit_env = inherit_env
        self.honour_ttl = honour_ttl
        self._own_workdir = workdir is None
        self.workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="jobrunner-"))
        self._states: dict[tuple[str, str], JobState] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticks = 0
        self.errors: list[str] = []

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> "JobRunner":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fake-job-runner", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout + 5)
            self._thread = None
        with self._lock:
            running = [a for s in self._states.values() for a in s.attempts if a.proc and a.exit_code is None]
        for attempt in running:
            self._signal(attempt, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for attempt in running:
            assert attempt.proc is not None
            try:
                attempt.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(attempt, signal.SIGKILL)
                attempt.proc.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "JobRunner":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # Test hooks

    def _state(self, job_name: str, namespace: str | None) -> JobState:
        with self._lock:
            matches = [s for (ns, name), s in self._states.items()
                       if name == job_name and (namespace is None or ns == namespace)]
        if not matches:
            raise KeyError(f"job {job_name!r} has not been seen by the runner")
        return matches[-1]

    def kill(self, job_name: str, sig: int = signal.SIGKILL, *, namespace: str | None = None,
             disruption: bool = False) -> None:
        """Signal the Job's current process. It then fails (exit 128+sig) and the Job retries
        according to its policy. ``disruption=True`` gives the pod a DisruptionTarget condition
        (as an eviction/preemption would) so that ``onPodConditions`` rules match."""
        state = self._state(job_name, namespace)
        with self._lock:
            attempt = state.running
            if attempt is None:
                raise RuntimeError(f"job {job_name!r} has no running process")
            attempt.disruption = disruption
            self._signal(attempt, sig)
        self._wake.set()

    @property
    def processes(self) -> dict[tuple[str, str], subprocess.Popen[bytes]]:
        """Currently running processes by (namespace, job name)."""
        with self._lock:
            return {key: s.running.proc for key, s in self._states.items() if s.running and s.running.proc}

    def exit_codes(self, job_name: str, *, namespace: str | None = None) -> list[int]:
        """Exit codes of the Job's finished attempts (128+N for signal N, like a container)."""
        state = self._state(job_name, namespace)
        with self._lock:
            return [a.exit_code for a in state.attempts if a.exit_code is not None]

    def attempts(self, job_name: str, *, namespace: str | None = None) -> list[Attempt]:
        state = self._state(job_name, namespace)
        with self._lock:
            return list(state.attempts)

    def output(self, job_name: str, *, namespace: str | None = None, attempt: int | None = None) -> str:
        """Captured stdout+stderr: of one attempt (1-based, -1 for the last) or of all attempts."""
        state = self._state(job_name, namespace)
        with self._lock:
            attempts = list(state.attempts)
        if attempt is not None:
            attempts = [attempts[attempt - 1 if attempt > 0 else attempt]]
        chunks = []
        for a in attempts:
            try:
                text = a.log_path.read_bytes()[-self.output_limit:].decode("utf-8", "replace")
            except FileNotFoundError:
                text = ""
            if attempt is None:
                chunks.append(f"--- {a.pod_name} (attempt {a.number}, exit {a.exit_code}) ---\n")
            chunks.append(text)
        return "".join(chunks)

    def pending_reason(self, job_name: str, *, namespace: str | None = None) -> str | None:
        return self._state(job_name, namespace).pending_reason

    def wait_idle(self, timeout: float = 30) -> bool:
        """Wait until no process runs and every Job seen is finished, suspended or deleted
        (and at least two polls happened since the call). Returns False on timeout."""
        deadline = time.monotonic() + timeout
        start_tick = self._ticks
        while time.monotonic() < deadline:
            self._wake.set()
            if self._ticks >= start_tick + 2 and self._idle():
                return True
            time.sleep(min(0.05, self.poll_interval))
        return False

    def _idle(self) -> bool:
        with self._lock:
            for s in self._states.values():
                if s.running is not None:
                    return False
                if not (s.finished or s.suspended or s.deleted):
                    return False
        return True

    def wait_for_job(self, job_name: str, condition: str = "Complete", *, namespace: str = "default",
                     timeout: float = 30) -> JSON:
        """Wait for a Job condition to be True; on timeout, the error shows status and output."""
        def met(job: JSON) -> bool:
            return any(c.get("type") == condition and c.get("status") == "True"
                       for c in (job.get("status") or {}).get("conditions") or [])
        try:
            return self.cluster.wait_for("batch/v1", "Job", namespace, job_name, met, timeout=timeout,
                                         what=f"condition {condition}=True")
        except TimeoutError as e:
            try:
                out = self.output(job_name, namespace=namespace)
            except KeyError:
                out = "(the runner never saw this job)"
            raise TimeoutError(f"{e}\n--- runner output ---\n{out[-4000:]}\n--- runner errors ---\n"
                               f"{self.errors[-5:]}") from None

    # ----------------------------------------------------------------------------------------
    # Controller loop

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001 - keep the controller alive; tests read .errors
                if not self._stopped.is_set():
                    logger.exception("job runner tick failed")
                    self.errors.append(f"{type(e).__name__}: {e}")
            self._ticks += 1
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _list_jobs(self) -> list[JSON]:
        if self.namespaces is None:
            return self.cluster.list("batch/v1", "Job")
        jobs: list[JSON] = []
        for ns in self.namespaces:
            jobs.extend(self.cluster.list("batch/v1", "Job", ns))
        return jobs

    def _tick(self) -> None:
        jobs = self._list_jobs()
        with self._lock:
            self._reap()
            seen = set()
            for job in jobs:
                meta = job["metadata"]
                key = (meta["namespace"], meta["name"])
                seen.add(key)
                state = self._states.get(key)
                if state is not None and state.uid != meta["uid"]:
                    self._forget(state)
                    state = None
                if state is None:
                    state = JobState(meta["namespace"], meta["name"], meta["uid"],
                                     self.workdir / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}", job)
                    state.dir.mkdir(parents=True, exist_ok=True)
                    self._states[key] = state
                state.job = job
                self._reconcile(state)
            for key, state in list(self._states.items()):
                if key not in seen and not state.deleted:
                    self._forget(state)
            self._escalate()

    def _forget(self, state: JobState) -> None:
        """The Job was deleted (or replaced): stop its process."""
        state.deleted = True
        attempt = state.running
        if attempt is not None and attempt.term_sent is None:
            self._terminate(attempt, "deleted", state)

    def _grace_for(self, state: JobState) -> float:
        pod_spec = ((state.job.get("spec") or {}).get("template") or {}).get("spec") or {}
        value = pod_spec.get("terminationGracePeriodSeconds")
        return float(value) if isinstance(value, (int, float)) else self.grace_period

    def _terminate(self, attempt: Attempt, reason: str, state: JobState) -> None:
        attempt.stop_reason = attempt.stop_reason or reason
        attempt.term_sent = time.monotonic()
        attempt.grace = self._grace_for(state)
        self._signal(attempt, signal.SIGTERM)

    @staticmethod
    def _signal(attempt: Attempt, sig: int) -> None:
        if attempt.proc is None or attempt.exit_code is not None:
            return
        try:
            os.killpg(attempt.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                attempt.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _escalate(self) -> None:
        now = time.monotonic()
        for state in self._states.values():
            attempt = state.running
            if attempt is not None and attempt.term_sent is not None and now - attempt.term_sent >= attempt.grace:
                self._signal(attempt, signal.SIGKILL)

    def _reap(self) -> None:
        for state in self._states.values():
            attempt = state.running
            if attempt is None or attempt.proc is None:
                continue
            code = attempt.proc.poll()
            if code is None:
                continue
            attempt.exit_code = 128 - code if code < 0 else code  # -9 -> 137, like a container runtime
            self._trim_log(attempt)
            self._record_exit(attempt)
            self._on_exit(state, attempt)

    def _trim_log(self, attempt: Attempt) -> None:
        try:
            size = attempt.log_path.stat().st_size
            if size > self.output_limit:
                data = attempt.log_path.read_bytes()[-self.output_limit:]
                attempt.log_path.write_bytes(f"[... {size - self.output_limit} bytes dropped ...]\n".encode() + data)
        except FileNotFoundError:
            pass

    def _on_exit(self, state: JobState, attempt: Attempt) -> None:
        code = attempt.exit_code
        assert code is not None
        if state.deleted or attempt.stop_reason in ("suspend", "deleted", "shutdown", "deadline"):
            return  # pods removed by the controller do not count as failures
        spec = state.job.get("spec") or {}
        if code == 0:
            state.succeeded += 1
            self._finish(state, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
            return
        action, index = self._match_failure_policy(spec, attempt, code)
        if action == "FailJob":
            state.failed += 1
            container = (((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}])[0].get("name")
            self._finish(state, "Failed", "PodFailurePolicy",
                         f"Container {container} for pod {state.namespace}/{attempt.pod_name} failed with exit "
                         f"code {code} matching FailJob rule at index {index}")
            return
        if action != "Ignore":
            state.failed += 1
            backoff_limit = spec.get("backoffLimit", 6)
            if state.failed > int(backoff_limit):
                self._finish(state, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
        state.next_try = time.monotonic() + self.retry_delay

    @staticmethod
    def _match_failure_policy(spec: Mapping[str, Any], attempt: Attempt, code: int) -> tuple[str | None, int | None]:
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
        for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
            on_codes = rule.get("onExitCodes")
            if on_codes:
                if on_codes.get("containerName") not in (None, containers[0].get("name")):
                    continue
                values = on_codes.get("values") or []
                if (on_codes.get("operator") == "In" and code in values) or \
                        (on_codes.get("operator") == "NotIn" and code not in values):
                    return rule.get("action"), index
            for pc in rule.get("onPodConditions") or []:
                if pc.get("type") == "DisruptionTarget" and pc.get("status", "True") == "True" and attempt.disruption:
                    return rule.get("action"), index
        return None, None

    def _finish(self, state: JobState, kind: str, reason: str, message: str) -> None:
        now = sem.now_rfc3339()
        first = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
        self._set_condition(state, first, "True", reason, message, now)
        self._set_condition(state, kind, "True", reason, message, now)
        state.finished = kind
        state.finished_at = time.time()
        if kind == "Complete":
            state.completion_time = now
        attempt = state.running
        if attempt is not None and attempt.term_sent is None:
            self._terminate(attempt, "deadline" if reason == "DeadlineExceeded" else "shutdown", state)

    @staticmethod
    def _set_condition(state: JobState, ctype: str, status: str, reason: str, message: str, now: str) -> None:
        for cond in state.conditions:
            if cond["type"] == ctype:
                if cond["status"] != status:
                    cond["lastTransitionTime"] = now
                cond.update(status=status, reason=reason, message=message, lastProbeTime=now)
                return
        state.conditions.append({"type": ctype, "status": status, "reason": reason, "message": message,
                                 "lastProbeTime": now, "lastTransitionTime": now})

    def _reconcile(self, state: JobState) -> None:
        job = state.job
        spec = job.get("spec") or {}
        if state.finished:
            self._maybe_ttl(state)
            self._write_status(state)
            return
        if (job.get("metadata") or {}).get("deletionTimestamp"):
            attempt = state.running
            if attempt is not None and attempt.term_sent is None:
                self._terminate(attempt, "deleted", state)
            self._write_status(state)
            return
        now = sem.now_rfc3339()
        if spec.get("suspend"):
            attempt = state.running
            if attempt is not None and attempt.term_sent is None:
                self._terminate(attempt, "suspend", state)
            if state.pending_pod is not None:  # a pod that never started is deleted too
                self.pods.delete(state.pending_pod)
                state.pending_pod, state.pending_reason = None, None
            if not state.suspended:
                state.suspended = True
                self._set_condition(state, "Suspended", "True", "JobSuspended", "Job suspended", now)
            self._write_status(state)
            return
        if state.suspended:
            state.suspended = False
            state.start_time = None  # reset on resume, as the Job controller does
            self._set_condition(state, "Suspended", "False", "JobResumed", "Job resumed", now)
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and state.start_time and \
                time.time() - sem.parse_rfc3339(state.start_time).timestamp() > float(deadline):
            self._finish(state, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            self._write_status(state)
            return
        if state.running is None and time.monotonic() >= state.next_try:
            self._start_attempt(state)
        self._write_status(state)

    def _maybe_ttl(self, state: JobState) -> None:
        ttl = (state.job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if not self.honour_ttl or ttl is None or state.finished_at is None or state.last_written is None:
            return
        if time.time() - state.finished_at >= float(ttl):
            self.cluster.delete("batch/v1", "Job", state.namespace, state.name,
                                propagation_policy="Background", ignore_missing=True)

    def _read_object(self, kind: str, namespace: str, name: str) -> JSON | None:
        return self.cluster.get_or_none("v1", kind, namespace, name)

    def _pod_for_attempt(self, state: JobState) -> JSON | None:
        """The pod the Job controller creates (or the one already waiting), or None when it cannot
        create one: its ServiceAccount does not exist (FailedCreate, retried)."""
        if state.pending_pod is not None:
            return state.pending_pod
        pod_spec = ((state.job.get("spec") or {}).get("template") or {}).get("spec") or {}
        account = pod_spec.get("serviceAccountName") or "default"
        if self._read_object("ServiceAccount", state.namespace, account) is None:
            state.pending_reason = self.pods.failed_create(state.job, account)
            return None
        suffix = "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        unschedulable = unschedulable_reason(pod_spec, self.node_labels)
        state.pending_pod = self.pods.create(state.job, f"{state.name}-{suffix}", scheduled=unschedulable is None)
        if unschedulable is not None:
            self.pods.unschedulable(state.pending_pod, unschedulable)
        return state.pending_pod

    def _blocked(self, state: JobState, pod: JSON) -> str | None:
        """Why the pod's container cannot start before its volumes are looked at, if it cannot."""
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        image = container.get("image", "")
        if not (pod.get("spec") or {}).get("nodeName"):
            return unschedulable_reason(pod.get("spec") or {}, self.node_labels)
        if not self.pullable(image):
            message = f'Back-off pulling image "{image}"'
            self.pods.waiting(pod, "ImagePullBackOff", message, [
                ("Failed", f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and unpack '
                           f'image "{image}": not found'),
                ("Failed", "Error: ErrImagePull")])
            return message
        return None

    def _start_attempt(self, state: JobState) -> None:
        state.next_try = time.monotonic() + 1.0  # a pod that cannot start is looked at again in a second
        pod = self._pod_for_attempt(state)
        if pod is None:
            return
        blocked = self._blocked(state, pod)
        if blocked is not None:
            state.pending_reason = blocked
            return
        number = len(state.attempts) + 1
        pod_name = pod["metadata"]["name"]
        attempt_dir = state.dir / f"attempt-{number}"
        if attempt_dir.exists():
            shutil.rmtree(attempt_dir)
        attempt_dir.mkdir(parents=True)
        try:
            launch = build_pod_launch(state.job, pod_name, attempt_dir, self._read_object, base_env=self.base_env,
                                      entrypoints=self.entrypoints, inherit_env=self.inherit_env,
                                      pod_uid=pod["metadata"].get("uid"))
        except PodPending as e:
            state.pending_reason = str(e)
            self.pods.waiting(pod, e.reason, str(e) if e.reason != "ContainerCreating" else "", [e.event])
            shutil.rmtree(attempt_dir, ignore_errors=True)
            return
        except ValueError as e:  # cannot emulate this pod: fail it like a container that cannot start
            state.pending_reason, state.pending_pod = None, None
            attempt = Attempt(number, pod_name, state.dir / f"attempt-{number}.log", started=time.monotonic(), pod=pod)
            attempt.log_path.write_text(f"jobrunner: cannot start the container: {e}\n")
            attempt.exit_code = 128
            state.attempts.append(attempt)
            self.pods.terminated(pod, 128, f"jobrunner: cannot start the container: {e}", sem.now_rfc3339())
            self._on_exit(state, attempt)
            return
        for key, value in (self.attempt_env(state.namespace, state.name, number) if self.attempt_env else {}).items():
            if value is None:
                launch.env.pop(key, None)
            else:
                launch.env[key] = value
        state.pending_reason, state.pending_pod = None, None
        log_path = state.dir / f"attempt-{number}.log"
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        attempt = Attempt(number, pod_name, log_path, started=time.monotonic(), pod=pod, started_at=sem.now_rfc3339(),
                          termination_log=launch.termination_log, policy=container.get("terminationMessagePolicy"))
        with open(log_path, "wb") as log:
            attempt.proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        state.attempts.append(attempt)
        self.pods.running(pod)
        if state.start_time is None:
            state.start_time = sem.now_rfc3339()
        logger.info("job %s/%s: started %s (pid %s): %s", state.namespace, state.name, pod_name,
                    attempt.proc.pid, launch.argv)

    def _record_exit(self, attempt: Attempt) -> None:
        """The pod's final status: its exit code and termination message; a pod the controller
        stopped (suspend, deadline, the Job finished) is deleted, as the Job controller does."""
        if attempt.pod is None or attempt.exit_code is None:
            return
        if attempt.stop_reason in ("suspend", "deadline", "shutdown"):
            self.pods.delete(attempt.pod)
            return
        try:
            file_text = pathlib.Path(attempt.termination_log).read_text("utf-8", "replace") if attempt.termination_log else ""
        except FileNotFoundError:
            file_text = ""
        try:
            tail = attempt.log_path.read_bytes()[-64 * 1024:]
        except FileNotFoundError:
            tail = b""
        message = termination_message(attempt.policy, file_text, tail, attempt.exit_code)
        self.pods.terminated(attempt.pod, attempt.exit_code, message, attempt.started_at)

    def _write_status(self, state: JobState) -> None:
        if state.deleted:
            return
        running = state.running
        active = 1 if running is not None and running.term_sent is None else 0
        terminating = 1 if running is not None and running.term_sent is not None else 0
        status: JSON = {
            "startTime": state.start_time,
            "active": active or None,
            "ready": active,
            "terminating": terminating,
            "succeeded": state.succeeded or None,
            "failed": state.failed or None,
            "completionTime": state.completion_time,
            "conditions": [dict(c) for c in state.conditions] or None,
            "uncountedTerminatedPods": {},
        }
        if status == state.last_written:
            return
        try:
            self.cluster.patch_status("batch/v1", "Job", state.namespace, state.name, {"status": status})
        except Exception as e:  # noqa: BLE001 - deleted meanwhile, or an injected fault: retry next tick
            status_code = getattr(e, "status", None)
            if status_code != 404:
                self.errors.append(f"status write for {state.namespace}/{state.name}: {e}")
            return
        state.last_written = status

"""A fake Kubernetes cluster for end-to-end tests: kmock's emulator as a real HTTP server.

Usage::

    with FakeCluster(crds=[KEYMIGRATION_CRD]) as cluster:
        cluster.create({"apiVersion": "keymigration.io/v1alpha1", "kind": "KeyMigration", ...})
        obj = cluster.get("keymigration.io/v1alpha1", "KeyMigration", "default", "m1")
        with JobRunner(cluster, base_env={...}) as runner:
            ...

The server runs in a background thread with its own asyncio loop and listens on 127.0.0.1 on a
free port, so synchronous tests, the operator (kopf, a subprocess), the ``kubernetes`` client,
worker subprocesses and the real ``kubectl`` all reach it through ``cluster.kubeconfig``.

See tests/support/README.md for what is emulated and what is not.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import pathlib
import random
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from .emulator import FakeApiServer

JSON = dict[str, Any]

__all__ = ["FakeCluster", "JobRunner", "ApiException", "condition", "load_manifests"]

TEST_USER_AGENT = "fake-cluster-test-helpers"

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}


def load_manifests(source: Mapping[str, Any] | str | os.PathLike[str]) -> list[JSON]:
    """A manifest dict as is, or every document of a YAML file (multi-document allowed)."""
    if isinstance(source, Mapping):
        return [dict(source)]
    text = pathlib.Path(source).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


class FakeCluster:
    """A kmock-based fake API server in a background thread, plus synchronous helpers.

    ``crds``: CRD manifests (dicts, or paths of YAML files) created at start-up.
    ``namespaces``: namespaces created at start-up (``default`` always exists).
    """

    def __init__(
            self,
            crds: Iterable[Mapping[str, Any] | str | os.PathLike[str]] = (),
            namespaces: Iterable[str] = ("default",),
            *,
            host: str = "127.0.0.1",
            port: int = 0,
            workdir: str | os.PathLike[str] | None = None,
            gc_interval: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._crds = list(crds)
        self._namespaces = ["default", *[n for n in namespaces if n != "default"]]
        self._own_workdir = workdir is None
        self.workdir = pathlib.Path(workdir or tempfile.mkdtemp(prefix="fake-cluster-"))
        self.kubeconfig = str(self.workdir / "kubeconfig")
        self.server: FakeApiServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._api_client: kubernetes.client.ApiClient | None = None
        self._discovery: dict[str, list[JSON]] = {}
        self._gc_task: concurrent.futures.Future[Any] | None = None
        self._gc_interval_default = gc_interval

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> "FakeCluster":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._thread_main, name="fake-apiserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the fake API server did not start in 30 s")
        if self._startup_error is not None:
            raise RuntimeError("the fake API server failed to start") from self._startup_error
        self._write_kubeconfig()
        for ns in self._namespaces:
            self.create_namespace(ns, exist_ok=True)
        for crd in self._crds:
            self.register_crd(crd)
        if self._gc_interval_default:
            self.start_gc(self._gc_interval_default)
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self.stop_gc()
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=15)
        self._thread = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "FakeCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._amain())
        except BaseException as e:  # noqa: BLE001
            self._startup_error = e
            self._ready.set()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _amain(self) -> None:
        self.server = FakeApiServer()
        self._stop_event = asyncio.Event()
        async with self.server:  # kmock's own context: its DSL streams and error bookkeeping
            web_server = aiohttp.web.Server(self.server, handler_cancellation=True)
            tcp = await asyncio.get_running_loop().create_server(web_server, self.host, self.port)
            self.port = tcp.sockets[0].getsockname()[1]
            self.server.server_address = f"{self.host}:{self.port}"
            self._ready.set()
            try:
                await self._stop_event.wait()
            finally:
                self.server.stop_watches()
                tcp.close()
                await web_server.shutdown(timeout=0.25)  # idle keep-alive clients would hold it
                await tcp.wait_closed()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        }
        pathlib.Path(self.kubeconfig).write_text(yaml.safe_dump(config))

    def env(self) -> dict[str, str]:
        """Environment variables that point clients (kubectl, the kubernetes client) here."""
        return {"KUBECONFIG": self.kubeconfig}

    # ----------------------------------------------------------------------------------------
    # In-process access (runs in the server's loop, under its lock)

    def call(self, fn: Callable[[FakeApiServer], Any], timeout: float = 30) -> Any:
        """Run ``fn(server)`` in the server's loop under its lock and return the result."""
        assert self._loop is not None and self.server is not None, "the cluster is not started"
        server = self.server

        async def run() -> Any:
            async with server._lock:
                result = fn(server)
            server._schedule_system_pass()
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def gc(self) -> int:
        """Run the garbage collector to a fixpoint (cascading). Returns the number of deletions."""
        return self.call(lambda s: s.gc_pass())

    def start_gc(self, interval: float = 0.5) -> None:
        """Run gc() in the background every ``interval`` seconds (in the server's loop)."""
        if self._gc_task is not None:
            return
        assert self._loop is not None and self.server is not None
        server = self.server

        async def loop_gc() -> None:
            while True:
                async with server._lock:
                    server.gc_pass()
                server._schedule_system_pass()
                await asyncio.sleep(interval)

        self._gc_task = asyncio.run_coroutine_threadsafe(loop_gc(), self._loop)

    def stop_gc(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            self._gc_task = None

    def chaos(self, rate: float, statuses: tuple[int, ...] = (429, 500, 503), *, applies: Callable[[Any], bool] | None = None,
              seed: int = 7) -> None:
        """Answer a share ``rate`` of requests (those ``applies(kmock_request)`` chooses; by default
        every request but this helper's own) with a random 429 or 5xx, as an overloaded API server
        does. ``calm()`` stops it; ``chaos_answers()`` counts what was injected."""
        from .emulator import Chaos

        chosen = applies or (lambda r: r.headers.get("User-Agent") != TEST_USER_AGENT)
        self.call(lambda s: setattr(s, "chaos", Chaos(rate, statuses, chosen, random.Random(seed))))

    def calm(self) -> None:
        self.call(lambda s: setattr(s, "chaos", None))

    def chaos_answers(self) -> dict[int, int]:
        return self.call(lambda s: dict(s.chaos.answered) if s.chaos else {})

    @property
    def requests(self) -> list[Any]:
        """kmock's record of the requests served so far (kmock.Request objects)."""
        return self.call(lambda s: list(s._requests))

    def history(self, api_version: str, kind: str, namespace: str | None, name: str) -> list[JSON | None]:
        """All stored versions of an object (kmock's history; None marks a deletion)."""
        def read(s: FakeApiServer) -> list[JSON | None]:
            rdef = s.find_by_kind(api_version, kind)
            if rdef is None:
                raise KeyError(f"{api_version} {kind} is not served")
            key = (rdef.kmock_resource, namespace if rdef.namespaced else None, name)
            if key not in s.objects:
                return []
            return [None if v is None else dict(v.raw) for v in s.objects[key].history]
        return self.call(read)

    # ----------------------------------------------------------------------------------------
    # HTTP helpers, through the ``kubernetes`` client

    @property
    def api_client(self) -> kubernetes.client.ApiClient:
        if self._api_client is None:
            self._api_client = self.new_api_client()
        return self._api_client

    def new_api_client(self) -> kubernetes.client.ApiClient:
        """A fresh ``kubernetes`` ApiClient loaded from this cluster's kubeconfig."""
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        client = kubernetes.client.ApiClient(configuration)
        client.user_agent = TEST_USER_AGENT  # so a test can tell its own requests from the code's
        return client

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str | None = None, accept: str = "application/json", timeout: float = 30) -> Any:
        """A raw API call; returns the decoded JSON body, raises ApiException on HTTP errors."""
        client = self.api_client
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        if content_type == PATCH_TYPES["apply"] and not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        _method, url, headers, body, post = client.param_serialize(
            method=method, resource_path=path, query_params=params, header_params=headers, body=body,
            auth_settings=["BearerToken"])
        response = client.call_api(_method, url, header_params=headers, body=body, post_params=post,
                                   _request_timeout=timeout)
        data = response.read()
        text = data.decode("utf-8") if data else ""
        if not 200 <= response.status < 300:
            raise ApiException.from_response(http_resp=response, body=text, data=None) or \
                ApiException(status=response.status, reason=response.reason, body=text)
        return json.loads(text) if text else None

    def _resource(self, api_version: str, kind: str) -> JSON:
        """Discovery over HTTP (cached): the APIResource for ``kind`` (or plural/singular/short name)."""
        for attempt in range(2):
            if attempt or api_version not in self._discovery:
                path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
                try:
                    self._discovery[api_version] = self.request("GET", path)["resources"]
                except ApiException as e:
                    if e.status != 404:
                        raise
                    self._discovery[api_version] = []
            for res in self._discovery[api_version]:
                if "/" in res["name"]:
                    continue
                if kind in (res["kind"], res["name"], res.get("singularName")) or kind in res.get("shortNames", ()):
                    return res
        raise LookupError(f"{kind} is not served in {api_version}")

    def path(self, api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        res = self._resource(api_version, kind)
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        if res["namespaced"] and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace)}"
        base += f"/{res['name']}"
        if name:
            base += f"/{urllib.parse.quote(name)}"
        if subresource:
            base += f"/{subresource}"
        return base

    def create(self, obj: Mapping[str, Any], namespace: str | None = None, *, keep_status: bool = True) -> JSON:
        """POST the object. Like a real server, POST drops ``status`` of resources with a status
        subresource; with ``keep_status`` (default) the given status is then written through
        ``/status`` (a second request), which is what seeding fixtures usually want."""
        obj = dict(obj)
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        created = self.request("POST", self.path(obj["apiVersion"], obj["kind"], ns), body=obj)
        res = self._resource(obj["apiVersion"], obj["kind"])
        if keep_status and obj.get("status") is not None and \
                any(r["name"] == f"{res['name']}/status" for r in self._discovery[obj["apiVersion"]]):
            created = self.patch_status(obj["apiVersion"], obj["kind"], created["metadata"].get("namespace"),
                                        created["metadata"]["name"], {"status": obj["status"]})
        return created

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> JSON:
        return self.request("GET", self.path(api_version, kind, namespace, name))

    def get_or_none(self, api_version: str, kind: str, namespace: str | None, name: str) -> JSON | None:
        try:
            return self.get(api_version, kind, namespace, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None) -> list[JSON]:
        return self.request("GET", self.path(api_version, kind, namespace), query={
            "labelSelector": label_selector, "fieldSelector": field_selector})["items"]

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str, patch: Any, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None) -> JSON:
        """``patch_type``: merge (default), json, strategic, apply."""
        query = {"fieldManager": field_manager or ("tests" if patch_type == "apply" else None)}
        return self.request("PATCH", self.path(api_version, kind, namespace, name, subresource), query=query,
                            body=patch, content_type=PATCH_TYPES[patch_type])

    def patch_status(self, api_version: str, kind: str, namespace: str | None, name: str, patch: Any, *,
                     patch_type: str = "merge") -> JSON:
        return self.patch(api_version, kind, namespace, name, patch, patch_type=patch_type, subresource="status")

    def replace(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> JSON:
        meta = obj.get("metadata") or {}
        return self.request("PUT", self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"],
                                             subresource), body=dict(obj))

    def apply(self, obj: Mapping[str, Any], *, field_manager: str = "tests") -> JSON:
        """Server-side apply (approximated: create, or strategic-merge into the live object)."""
        meta = obj.get("metadata") or {}
        return self.patch(obj["apiVersion"], obj["kind"], meta.get("namespace") or "default", meta["name"],
                          dict(obj), patch_type="apply", field_manager=field_manager)

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *,
               propagation_policy: str | None = None, ignore_missing: bool = False,
               preconditions: Mapping[str, str] | None = None) -> JSON | None:
        body: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if preconditions:
            body["preconditions"] = dict(preconditions)
        try:
            return self.request("DELETE", self.path(api_version, kind, namespace, name), body=body)
        except ApiException as e:
            if ignore_missing and e.status == 404:
                return None
            raise

    def create_namespace(self, name: str, *, exist_ok: bool = True) -> JSON:
        try:
            return self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        except ApiException as e:
            if e.status == 409 and exist_ok:
                return self.get("v1", "Namespace", None, name)
            raise

    def register_crd(self, crd: Mapping[str, Any] | str | os.PathLike[str]) -> list[JSON]:
        """Create CRD object(s) over HTTP; the fake then serves their resources (discovery included)."""
        created = []
        for doc in load_manifests(crd):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            try:
                created.append(self.create(doc, keep_status=False))
            except ApiException as e:
                if e.status != 409:
                    raise
                live = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, doc["metadata"]["name"])
                replacement = dict(doc, metadata=dict(doc["metadata"], resourceVersion=live["metadata"]["resourceVersion"]))
                created.append(self.replace(replacement))
        self._discovery.clear()
        return created

    def events(self, namespace: str | None = None, *, involved_name: str | None = None) -> list[JSON]:
        """Core v1 Events (what kopf posts), optionally for one involved object."""
        events = self.list("v1", "Event", namespace)
        if involved_name:
            events = [e for e in events if (e.get("involvedObject") or {}).get("name") == involved_name]
        return events

    def wait_for(self, api_version: str, kind: str, namespace: str | None, name: str,
                 predicate: Callable[[JSON], Any] = bool, *, timeout: float = 10, interval: float = 0.05,
                 what: str = "") -> JSON:
        """Poll the object until ``predicate(obj)`` is truthy; TimeoutError shows the last state."""
        deadline = time.monotonic() + timeout
        last: JSON | None = None
        while True:
            last = self.get_or_none(api_version, kind, namespace, name)
            if last is not None and predicate(last):
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {namespace}/{name}: {what or predicate!r} not met in {timeout}s; "
                                   f"last state: {json.dumps(last, indent=1)[:4000]}")
            time.sleep(interval)

    def wait_deleted(self, api_version: str, kind: str, namespace: str | None, name: str, *,
                     timeout: float = 10, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while self.get_or_none(api_version, kind, namespace, name) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {namespace}/{name} still exists after {timeout}s")
            time.sleep(interval)


def condition(obj: Mapping[str, Any] | None, type_: str) -> JSON | None:
    """The ``status.conditions`` entry of a type, or None."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


from .jobrunner import JobRunner  # noqa: E402  (re-exported; jobrunner imports nothing from here at import time)

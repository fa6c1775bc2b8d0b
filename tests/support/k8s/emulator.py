"""The API-server logic behind :class:`tests.support.k8s.cluster.FakeCluster`, built on kmock.

``FakeApiServer`` subclasses ``kmock.KubernetesEmulator``. kmock gives us the aiohttp request
handler protocol, request recording (``emulator.requests``), the object store with history
(``emulator.objects[...]``), Kubernetes-style error rendering (``kmock.KubernetesError`` ->
``Status``) and its DSL for extra endpoints. kmock 0.8 gets several things wrong or leaves them
out (see README.md, "kmock gaps"), so every request on a *resource* path (anything below
``/api/v1/...`` or ``/apis/G/V/...`` that names a resource) is served by this class instead:

* resourceVersion (one global counter), uid, creationTimestamp, generation;
* status subresource semantics, no-op writes, optimistic concurrency (409 on stale RV);
* merge / JSON / strategic-merge / apply patches, PUT;
* label and field selectors on list, watch and deletecollection;
* watch with resourceVersion replay, 410 Expired, timeoutSeconds, sendInitialEvents;
* deletion with finalizers, propagationPolicy (Orphan, Foreground via gc), preconditions;
* CRDs: creating a CRD object registers its resource (served versions, scope, subresources,
  printer columns); CR objects are pruned and defaulted by the CRD's structural schema;
* namespace and CRD cleanup (the namespace controller and the CRD finalizer);
* a garbage collector (``gc()``) for ownerReferences;
* server-side Table output for ``kubectl get`` with additionalPrinterColumns.

All state is touched only from the server's event loop (one thread), under ``self._lock``.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import copy
import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
import yaml
from kmock._internal import rendering

from . import semantics as sem

logger = logging.getLogger("tests.support.k8s.fakeapi")

JSON = dict[str, Any]
StorageKey = tuple[str, str, str]  # group, storage version, plural
ObjKey = tuple[str | None, str]  # namespace, name

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
SERVER_VERSION = {
    "major": "1", "minor": "35", "gitVersion": "v1.35.0-fake+kmock", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2025-12-01T00:00:00Z", "goVersion": "go1.25.0",
    "compiler": "gc", "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": "35",
}
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message,
                                 details={k: v for k, v in details.items() if v is not None} or {"causes": []})


@dataclasses.dataclass
class ResourceDef:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    generation: bool = True  # whether metadata.generation is maintained
    custom: bool = False  # served from a CRD (strategic merge patch is refused, PUT needs RV)
    storage_version: str = ""  # versions of one CRD share storage
    schema: JSON | None = None  # openAPIV3Schema of this version, for pruning/defaulting
    printer_columns: list[JSON] = dataclasses.field(default_factory=list)
    crd_name: str | None = None
    builtin: bool = False

    def __post_init__(self) -> None:
        self.singular = self.singular or self.kind.lower()
        self.storage_version = self.storage_version or self.version

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> StorageKey:
        return (self.group, self.storage_version, self.plural)

    @property
    def kmock_resource(self) -> kmock.resource:
        return kmock.resource(group=self.group, version=self.storage_version, plural=self.plural)

    def describe(self) -> str:  # "keymigrations.keymigration.io" / "secrets"
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTIN_RESOURCES: list[ResourceDef] = [
    ResourceDef("", "v1", "namespaces", "Namespace", False, frozenset({"status", "finalize"}),
                short_names=("ns",), generation=False, builtin=True),
    ResourceDef("", "v1", "secrets", "Secret", True, generation=False, builtin=True),
    ResourceDef("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",), generation=False, builtin=True),
    ResourceDef("", "v1", "events", "Event", True, short_names=("ev",), generation=False, builtin=True),
    ResourceDef("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",), generation=False,
                builtin=True),
    ResourceDef("", "v1", "pods", "Pod", True, frozenset({"status"}), short_names=("po",),
                categories=("all",), generation=False, builtin=True),
    ResourceDef("events.k8s.io", "v1", "events", "Event", True, short_names=("ev",), generation=False,
                builtin=True),
    ResourceDef("batch", "v1", "jobs", "Job", True, frozenset({"status"}), categories=("all",), builtin=True),
    ResourceDef("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
                frozenset({"status"}), short_names=("crd", "crds"), builtin=True),
    ResourceDef("coordination.k8s.io", "v1", "leases", "Lease", True, generation=False, builtin=True),
]


def resources_from_crd(crd: Mapping[str, Any]) -> list[ResourceDef]:
    """ResourceDefs for every served version of an apiextensions.k8s.io/v1 CRD manifest."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind):
        raise api_error(422, "Invalid", "CustomResourceDefinition needs spec.group, spec.names.plural and "
                                        "spec.names.kind")
    versions = spec.get("versions") or []
    storage = next((v["name"] for v in versions if v.get("storage")), versions[0]["name"] if versions else None)
    if storage is None:
        raise api_error(422, "Invalid", "CustomResourceDefinition needs spec.versions")
    result = []
    for v in versions:
        if not v.get("served", True):
            continue
        result.append(ResourceDef(
            group=group, version=v["name"], plural=plural, kind=kind,
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            subresources=frozenset((v.get("subresources") or {}).keys()),
            singular=names.get("singular") or kind.lower(),
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            generation=True, custom=True, storage_version=storage,
            schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            printer_columns=list(v.get("additionalPrinterColumns") or []),
            crd_name=(crd.get("metadata") or {}).get("name") or f"{plural}.{group}",
        ))
    return result


# --------------------------------------------------------------------------------------------
# Structural schema: pruning and defaulting (what the real server does to custom resources).


def prune_and_default(value: Any, schema: Mapping[str, Any] | None, *, root: bool = False) -> Any:
    """Drop fields the structural schema does not declare (unless x-kubernetes-preserve-unknown-fields
    or additionalProperties allow them) and fill in ``default`` values of missing properties."""
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        result = {}
        for key, sub in value.items():
            if (root or embedded) and key in ("apiVersion", "kind", "metadata"):
                result[key] = sub
            elif isinstance(props, Mapping) and key in props:
                result[key] = prune_and_default(sub, props[key])
            elif isinstance(addl, Mapping):
                result[key] = prune_and_default(sub, addl)
            elif addl is True or preserve:
                result[key] = sub
            # else: an unknown field, pruned silently
        if isinstance(props, Mapping):
            for key, sub in props.items():
                if key not in result and isinstance(sub, Mapping) and "default" in sub:
                    result[key] = prune_and_default(copy.deepcopy(sub["default"]), sub)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune_and_default(v, schema["items"]) for v in value]
    return value


# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """A parsed resource URL."""
    rdef: ResourceDef
    namespace: str | None
    name: str | None
    subresource: str | None


@dataclasses.dataclass
class LogEntry:
    rv: int
    storage_key: StorageKey
    type: str
    obj: JSON
    old: JSON | None


@dataclasses.dataclass(eq=False)
class Watcher:
    storage_key: StorageKey
    queue: asyncio.Queue[LogEntry | None]


CHAOS_ANSWERS = {
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    500: ("InternalError", "Internal error occurred: injected by the fake API server"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request"),
}


@dataclasses.dataclass
class Chaos:
    """Random answers of an overloaded or restarting API server (API Priority and Fairness 429s,
    5xx from an apiserver or etcd hiccup), before the request is looked at."""
    rate: float
    statuses: tuple[int, ...]
    applies: Callable[[Any], bool]
    rng: random.Random
    answered: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _generate_suffix(n: int = 5) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(random.choice(alphabet) for _ in range(n))


def _human_age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    try:
        seconds = max(0, int(time.time() - sem.parse_rfc3339(ts).timestamp()))
    except ValueError:
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


class FakeApiServer(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with a real API server's write semantics (see module doc)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.rv: int = 1000
        self.defs: dict[tuple[str, str, str], ResourceDef] = {}  # (group, version, plural) -> def
        self.store: dict[StorageKey, dict[ObjKey, JSON]] = collections.defaultdict(dict)
        self.uids: dict[str, tuple[StorageKey, ObjKey]] = {}
        self.log: collections.deque[LogEntry] = collections.deque(maxlen=50_000)
        self.log_floor: int = 0
        self.watchers: set[Watcher] = set()
        self.chaos: Chaos | None = None
        self.max_requests_recorded: int = 20_000
        self.history_limit: int = 200
        self.server_address: str = "127.0.0.1:0"
        self._request_counter = 0
        self._stopping = False
        self._system_scheduled = False
        for rdef in BUILTIN_RESOURCES:
            self.register(dataclasses.replace(rdef))
        # Extra non-resource endpoints, through kmock's DSL (lowest priority, overridable by tests).
        for probe in ("/healthz", "/livez", "/readyz"):
            self.fallback[f"get {probe}"] << b"ok"

    # ----------------------------------------------------------------------------------------
    # Registry

    def register(self, rdef: ResourceDef) -> None:
        self.defs[(rdef.group, rdef.version, rdef.plural)] = rdef
        info = self.resources[kmock.resource(group=rdef.group, version=rdef.version, plural=rdef.plural)]
        info.kind, info.singular, info.namespaced = rdef.kind, rdef.singular, rdef.namespaced
        info.verbs = set(ALL_VERBS)
        info.shortnames, info.categories = set(rdef.short_names), set(rdef.categories)
        info.subresources = set(rdef.subresources)

    def unregister(self, group: str, version: str, plural: str) -> None:
        self.defs.pop((group, version, plural), None)
        self.resources.pop(kmock.resource(group=group, version=version, plural=plural), None)

    def find(self, group: str, version: str, plural: str) -> ResourceDef | None:
        return self.defs.get((group, version, plural))

    def find_by_kind(self, api_version: str, kind_or_plural: str) -> ResourceDef | None:
        group, _, version = api_version.rpartition("/")
        for rdef in self.defs.values():
            if rdef.group == group and rdef.version == version and \
                    kind_or_plural in (rdef.kind, rdef.plural, rdef.singular):
                return rdef
        return None

    # ----------------------------------------------------------------------------------------
    # HTTP entry point (replaces kmock's, whose path parser crashes on /api/v1/namespaces)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        try:
            target, res = self._parse_path(raw_request.path)
            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = None
            action = self._guess_action(raw_request.method, target, dict(raw_request.query))
            request = rendering.Request(
                id=self._request_counter, method=raw_request.method, url=raw_request.url,
                params=dict(raw_request.query), headers=dict(raw_request.headers),
                body=body, text=body.decode("utf-8", "replace"), data=data, action=action,
                resource=res, namespace=target.namespace if target else None,
                name=target.name if target else None, subresource=target.subresource if target else None,
                raw_request=raw_request,
            )
            self._request_counter += 1
            self._requests.append(request)
            if len(self._requests) > self.max_requests_recorded:
                del self._requests[: len(self._requests) // 2]
            self._check_faults(request)
            if raw_request.path == "/openapi/v2" and raw_request.method == "GET":
                return self._serve_openapi_v2(raw_request)
            if raw_request.path.startswith("/openapi/v3") and raw_request.method == "GET":
                return self._serve_openapi_v3(raw_request)
            if target is not None:
                return await self._handle_resource(request, target, raw_request, body)
            return await kmock.RawHandler._handle(self, request)
        except kmock.KubernetesError as e:
            return await self._render_error(e)
        except asyncio.CancelledError:
            raise
        except NotImplementedError as e:
            return await self._render_error(api_error(404, "NotFound", f"the server could not find the requested "
                                                                       f"resource ({raw_request.path}): {e}"))
        except Exception as e:  # a bug here: show it to the client, log it for the test
            logger.exception("fake API server failed on %s %s", raw_request.method, raw_request.path_qs)
            return await self._render_error(e)

    @staticmethod
    def _guess_action(method: str, target: Target | None, query: Mapping[str, str]) -> kmock.action | None:
        if target is None:
            return None
        if method == "GET":
            return kmock.action.WATCH if query.get("watch") in ("true", "1") else \
                kmock.action.FETCH if target.name else kmock.action.LIST
        if method == "POST" and not target.name:
            return kmock.action.CREATE
        if method in ("PATCH", "PUT") and target.name:
            return kmock.action.UPDATE
        if method == "DELETE":
            return kmock.action.DELETE
        return None

    def _parse_path(self, path: str) -> tuple[Target | None, kmock.resource | None]:
        parts = [p for p in path.strip("/").split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        elif len(parts) == 2 and parts[0] == "apis":
            return None, kmock.resource(group=parts[1])
        else:
            return None, None
        if not rest:
            return None, kmock.resource(group=group, version=version)
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and self.find(group, version, rest[2]) is not None \
                and self.find(group, version, rest[2]).namespaced:
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), ("/".join(rest[2:]) or None)
        rdef = self.find(group, version, plural)
        if rdef is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource",
                            group=group, kind=plural)
        if sub is not None and sub not in rdef.subresources:
            raise api_error(404, "NotFound", "the server could not find the requested resource",
                            group=group, kind=plural, name=name)
        return Target(rdef, namespace, name, sub), kmock.resource(group=group, version=version, plural=plural)

    def _check_faults(self, request: rendering.Request) -> None:
        chaos = self.chaos
        if chaos is None or not chaos.applies(request) or chaos.rng.random() >= chaos.rate:
            return
        status = chaos.rng.choice(chaos.statuses)
        chaos.answered[status] += 1
        reason, message = CHAOS_ANSWERS[status]
        details = {"retryAfterSeconds": 1} if status in (429, 503) else {}
        raise api_error(status, reason, message, **details)

    # ----------------------------------------------------------------------------------------
    # Resource requests

    async def _handle_resource(self, request: rendering.Request, target: Target,
                               raw: aiohttp.web.BaseRequest, body: bytes) -> aiohttp.web.StreamResponse:
        rdef, params, method = target.rdef, request.params, raw.method
        if rdef.namespaced and target.namespace is None and method in ("POST",) and target.name is None:
            ns_from_body = ((request.data or {}).get("metadata") or {}).get("namespace") \
                if isinstance(request.data, dict) else None
            target.namespace = ns_from_body or "default"
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._serve_watch_stream(raw, target, params)
        async with self._lock:
            if method == "GET" and target.name is None:
                result = self._list(target, params)
                if "as=Table" in raw.headers.get("Accept", ""):
                    result = self._as_table(target.rdef, result, params)
                status = 200
            elif method == "GET":
                status, result = 200, self._present(self._get_or_404(target), rdef)
            elif method == "POST" and target.name is None:
                status, result = self._create(target, self._body_object(request, body), params)
            elif method == "PATCH" and target.name is not None:
                status, result = self._patch(target, raw.headers.get("Content-Type", ""), body, params)
            elif method == "PUT" and target.name is not None:
                status, result = 200, self._replace(target, self._body_object(request, body), params)
            elif method == "DELETE" and target.name is not None:
                status, result = self._delete_request(target, request, params)
            elif method == "DELETE":
                status, result = 200, self._delete_collection(target, request, params)
            else:
                raise api_error(405, "MethodNotAllowed", f"{method} is not supported on {raw.path}")
        self._schedule_system_pass()
        return aiohttp.web.json_response(result, status=status)

    @staticmethod
    def _body_object(request: rendering.Request, body: bytes) -> JSON:
        data = request.data
        if data is None and body:
            try:
                data = yaml.safe_load(body)
            except yaml.YAMLError as e:
                raise api_error(400, "BadRequest", f"cannot decode the request body: {e}")
        if not isinstance(data, dict):
            raise api_error(400, "BadRequest", "the request body must be a JSON object")
        return data

    # -- reads ---------------------------------------------------------------------------------

    def _get_or_404(self, target: Target) -> JSON:
        obj = self.store[target.rdef.storage_key].get((self._ns(target), target.name or ""))
        if obj is None:
            raise self._not_found(target.rdef, target.name)
        return obj

    @staticmethod
    def _ns(target: Target) -> str | None:
        return target.namespace if target.rdef.namespaced else None

    @staticmethod
    def _not_found(rdef: ResourceDef, name: str | None) -> kmock.KubernetesError:
        return api_error(404, "NotFound", f'{rdef.describe()} "{name}" not found',
                         name=name, group=rdef.group, kind=rdef.plural)

    def _present(self, obj: JSON, rdef: ResourceDef) -> JSON:
        """The object as served for the requested version (no conversion: apiVersion only)."""
        if obj.get("apiVersion") != rdef.api_version:
            obj = dict(obj, apiVersion=rdef.api_version)
        return obj

    def _selectors(self, params: Mapping[str, str], name: str | None = None):
        try:
            labels = sem.parse_label_selector(params.get("labelSelector"))
            fields = sem.parse_field_selector(params.get("fieldSelector"))
        except sem.SelectorError as e:
            raise api_error(400, "BadRequest", str(e))
        if name:
            fields.append(("metadata.name", "=", name))
        return labels, fields

    def _matches(self, obj: JSON, namespace: str | None, labels, fields) -> bool:
        meta = obj.get("metadata") or {}
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        return sem.match_labels(labels, meta.get("labels")) and sem.match_fields(fields, obj)

    def _list(self, target: Target, params: Mapping[str, str]) -> JSON:
        labels, fields = self._selectors(params)
        rdef = target.rdef
        items = [self._present(obj, rdef) for key, obj in sorted(self.store[rdef.storage_key].items(),
                                                                 key=lambda kv: (kv[0][0] or "", kv[0][1]))
                 if self._matches(obj, self._ns(target), labels, fields)]
        return {"apiVersion": rdef.api_version, "kind": f"{rdef.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def _as_table(self, rdef: ResourceDef, listing: JSON, params: Mapping[str, str]) -> JSON:
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
        custom = rdef.printer_columns or []
        for col in custom:
            columns.append({"name": col.get("name", ""), "type": col.get("type", "string"),
                            "format": col.get("format", ""), "description": col.get("description", ""),
                            "priority": col.get("priority", 0)})
        if not custom:
            columns.append({"name": "Age", "type": "date", "format": "", "priority": 0,
                            "description": "CreationTimestamp of the object."})
        include = params.get("includeObject", "PartialObjectMetadata")
        rows = []
        for obj in listing["items"]:
            cells: list[Any] = [obj["metadata"]["name"]]
            for col in custom:
                found = sem.jsonpath(obj, col.get("jsonPath", ""))
                value = found[0] if found else None
                if col.get("type") == "date" and value is not None:
                    value = _human_age(value)
                cells.append(value)
            if not custom:
                cells.append(_human_age(obj["metadata"].get("creationTimestamp")))
            row_obj = obj if include == "Object" else None if include == "None" else {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
            row: JSON = {"cells": cells}
            if row_obj is not None:
                row["object"] = row_obj
            rows.append(row)
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": listing["metadata"]["resourceVersion"]},
                "columnDefinitions": columns, "rows": rows}

    # -- writes --------------------------------------------------------------------------------

    def _commit(self, rdef: ResourceDef, key: ObjKey, old: JSON | None, new: JSON, event: str,
                *, dry_run: bool = False) -> JSON:
        if dry_run:
            return new
        self.rv += 1
        new.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.store[rdef.storage_key][key] = new
        uid = new["metadata"].get("uid")
        if uid:
            self.uids[uid] = (rdef.storage_key, key)
        self._record_history(rdef, key, new)
        self._publish(LogEntry(self.rv, rdef.storage_key, event, new, old))
        return new

    def _remove(self, rdef: ResourceDef, key: ObjKey, last: JSON) -> JSON:
        self.rv += 1
        final = copy.deepcopy(last)
        final["metadata"]["resourceVersion"] = str(self.rv)
        self.store[rdef.storage_key].pop(key, None)
        self.uids.pop(final["metadata"].get("uid", ""), None)
        kkey = (rdef.kmock_resource, key[0], key[1])
        if kkey in self.objects:
            self.objects[kkey].delete()
        self._publish(LogEntry(self.rv, rdef.storage_key, "DELETED", final, last))
        if rdef.group == "apiextensions.k8s.io" and rdef.plural == "customresourcedefinitions":
            for sub in resources_from_crd(final):
                self.unregister(sub.group, sub.version, sub.plural)
        return final

    def _record_history(self, rdef: ResourceDef, key: ObjKey, new: JSON) -> None:
        kkey = (rdef.kmock_resource, key[0], key[1])
        if kkey not in self.objects:
            self.objects[kkey] = new
        else:
            hist = self.objects[kkey].history
            hist.append(new)
            if len(hist) > self.history_limit:
                del hist[: len(hist) - self.history_limit]

    def _publish(self, entry: LogEntry) -> None:
        if len(self.log) == self.log.maxlen:
            self.log_floor = self.log[0].rv
        self.log.append(entry)
        for watcher in list(self.watchers):
            if watcher.storage_key == entry.storage_key:
                watcher.queue.put_nowait(entry)

    def _rdef_for_storage(self, storage_key: StorageKey) -> ResourceDef | None:
        for rdef in self.defs.values():
            if rdef.storage_key == storage_key and rdef.version == rdef.storage_version:
                return rdef
        return next((r for r in self.defs.values() if r.storage_key == storage_key), None)

    def _normalize(self, rdef: ResourceDef, obj: JSON) -> JSON:
        """Server-side conversions and defaults applied on every write."""
        obj["apiVersion"] = f"{rdef.group}/{rdef.storage_version}" if rdef.group else rdef.storage_version
        obj["kind"] = rdef.kind
        meta = obj.setdefault("metadata", {})
        meta.pop("managedFields", None)
        for empty in ("labels", "annotations", "finalizers", "ownerReferences"):
            if empty in meta and not meta[empty]:
                del meta[empty]
        if rdef.group == "" and rdef.plural == "secrets":
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = dict(obj.get("data") or {})
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
                obj["data"] = data
            obj.setdefault("type", "Opaque")
        if rdef.custom and rdef.schema:
            obj = prune_and_default(obj, rdef.schema, root=True)
        return obj

    @staticmethod
    def _spec_view(rdef: ResourceDef, obj: JSON) -> JSON:
        return {k: v for k, v in obj.items()
                if k not in ("metadata", "apiVersion", "kind") and not (k == "status" and "status" in rdef.subresources)}

    def _create(self, target: Target, body: JSON, params: Mapping[str, str], *,
                keep_status: bool = False) -> tuple[int, JSON]:
        rdef = target.rdef
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise api_error(400, "BadRequest", "metadata must be an object")
        if body.get("kind") not in (None, rdef.kind):
            raise api_error(400, "BadRequest", f"the kind {body.get('kind')!r} does not match {rdef.kind!r}")
        if rdef.namespaced:
            if meta.get("namespace") not in (None, "", target.namespace):
                raise api_error(400, "BadRequest", "the namespace of the provided object does not match "
                                                   "the namespace sent on the request")
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + _generate_suffix()
            else:
                raise api_error(422, "Invalid", f'{rdef.kind} "" is invalid: metadata.name: Required value: '
                                                "name or generateName is required", kind=rdef.kind)
        key = (meta.get("namespace"), meta["name"])
        if key in self.store[rdef.storage_key]:
            raise api_error(409, "AlreadyExists", f'{rdef.describe()} "{meta["name"]}" already exists',
                            name=meta["name"], group=rdef.group, kind=rdef.plural)
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = sem.now_rfc3339()
        if rdef.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if "status" in rdef.subresources and not keep_status:
            obj.pop("status", None)  # the real server drops status on create
        is_crd = rdef.group == "apiextensions.k8s.io" and rdef.plural == "customresourcedefinitions"
        if is_crd:
            new_defs = resources_from_crd(obj)
            self._crd_status(obj)
            meta.setdefault("finalizers", [])
            if CRD_CLEANUP_FINALIZER not in meta["finalizers"]:
                meta["finalizers"].append(CRD_CLEANUP_FINALIZER)
        if rdef.group == "batch" and rdef.plural == "jobs":
            self._job_defaults(obj)
        if rdef.group == "" and rdef.plural == "namespaces":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
        obj = self._normalize(rdef, obj)
        self._validate_meta(rdef, obj)
        dry = params.get("dryRun") == "All"
        stored = self._commit(rdef, key, None, obj, "ADDED", dry_run=dry)
        if is_crd and not dry:
            for sub in new_defs:
                self.register(sub)
        if rdef.group == "" and rdef.plural == "namespaces" and not dry:
            # The ServiceAccount controller gives every namespace its "default" ServiceAccount.
            accounts = self.find("", "v1", "serviceaccounts")
            if accounts is not None:
                self._create(Target(accounts, meta["name"], None, None),
                             {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}, {})
        return 201, self._present(stored, rdef)

    @staticmethod
    def _validate_meta(rdef: ResourceDef, obj: JSON) -> None:
        """ValidateObjectMeta's name and labels (422 Invalid), and a pod template's labels."""
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        problems = [f'metadata.name: Invalid value: "{name}": {p}'
                    for p in sem.name_problems(name, dns_label=rdef.group == "" and rdef.plural == "namespaces")]
        problems += sem.label_problems(meta.get("labels"), "metadata.labels")
        template = (obj.get("spec") or {}).get("template")
        if isinstance(template, dict):
            problems += sem.label_problems((template.get("metadata") or {}).get("labels"), "spec.template.labels")
        if problems:
            what = f"{rdef.kind}.{rdef.group}" if rdef.group else rdef.kind
            raise api_error(422, "Invalid", f'{what} "{name}" is invalid: ' + ", ".join(problems), kind=rdef.kind,
                            group=rdef.group, name=name)

    @staticmethod
    def _job_defaults(obj: JSON) -> None:
        """batch/v1 Job defaulting and validation done by the real API server (the part that matters)."""
        meta, spec = obj["metadata"], obj.setdefault("spec", {})
        pod_spec = ((spec.get("template") or {}).get("spec") or {})
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            raise api_error(422, "Invalid", f'Job.batch "{meta["name"]}" is invalid: spec.template.spec.restartPolicy: '
                                            f'Required value: valid values: "OnFailure", "Never"', kind="Job",
                            group="batch", name=meta["name"])
        if not pod_spec.get("containers"):
            raise api_error(422, "Invalid", f'Job.batch "{meta["name"]}" is invalid: spec.template.spec.containers: '
                                            "Required value", kind="Job", group="batch", name=meta["name"])
        if spec.get("podFailurePolicy") and pod_spec.get("restartPolicy") != "Never":
            raise api_error(422, "Invalid", f'Job.batch "{meta["name"]}" is invalid: spec.podFailurePolicy: Invalid '
                                            "value: only allowed when restartPolicy is Never", kind="Job",
                            group="batch", name=meta["name"])
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels")
        if template_labels and not meta.get("labels"):
            meta["labels"] = dict(template_labels)  # SetDefaults_Job: labels default to the template's
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("manualSelector", None)
        spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
        if spec.get("manualSelector") is None:
            spec.pop("manualSelector")
            uid, name = meta["uid"], meta["name"]
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            tmeta = spec.setdefault("template", {}).setdefault("metadata", {})
            tmeta["labels"] = {**(tmeta.get("labels") or {}), "batch.kubernetes.io/controller-uid": uid,
                               "batch.kubernetes.io/job-name": name, "controller-uid": uid, "job-name": name}

    @staticmethod
    def _job_update_checks(old: JSON, new: JSON) -> None:
        """Immutable Job fields (spec.template may change only while suspended, and only scheduling bits)."""
        name = old["metadata"]["name"]
        ospec, nspec = old.get("spec") or {}, new.get("spec") or {}
        for field in ("selector", "completionMode", "podFailurePolicy", "manualSelector"):
            if ospec.get(field) != nspec.get(field):
                raise api_error(422, "Invalid", f'Job.batch "{name}" is invalid: spec.{field}: Invalid value: '
                                                "field is immutable", kind="Job", group="batch", name=name)

        def strip(template: Any) -> Any:
            t = copy.deepcopy(template or {})
            if ospec.get("suspend"):
                t.pop("metadata", None)
                for f in ("nodeSelector", "tolerations", "affinity", "schedulingGates"):
                    (t.get("spec") or {}).pop(f, None)
            return t
        if strip(ospec.get("template")) != strip(nspec.get("template")):
            raise api_error(422, "Invalid", f'Job.batch "{name}" is invalid: spec.template: Invalid value: '
                                            "field is immutable", kind="Job", group="batch", name=name)

    @staticmethod
    def _crd_status(obj: JSON) -> None:
        spec = obj.get("spec") or {}
        names = dict(spec.get("names") or {})
        names.setdefault("singular", names.get("kind", "").lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        now = sem.now_rfc3339()
        obj["status"] = {
            "acceptedNames": names,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        }

    def _update(self, target: Target, mutate: Callable[[JSON], JSON], params: Mapping[str, str], *,
                require_rv: bool = False) -> JSON:
        rdef = target.rdef
        old = self._get_or_404(target)
        candidate = mutate(copy.deepcopy(self._present(old, rdef)))
        if not isinstance(candidate, dict):
            raise api_error(422, "Invalid", "the patched object is not a JSON object")
        new = self._merge_update(rdef, old, candidate, target.subresource, require_rv=require_rv)
        key = (self._ns(target), target.name or "")
        if new == old:
            return self._present(old, rdef)  # no-op: no new resourceVersion, no watch event
        dry = params.get("dryRun") == "All"
        if not dry and new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._present(self._remove(rdef, key, new), rdef)
        stored = self._commit(rdef, key, old, new, "MODIFIED", dry_run=dry)
        if rdef.group == "apiextensions.k8s.io" and rdef.plural == "customresourcedefinitions" and not dry:
            for sub in resources_from_crd(stored):
                self.register(sub)
        return self._present(stored, rdef)

    def _merge_update(self, rdef: ResourceDef, old: JSON, candidate: JSON, subresource: str | None, *,
                      require_rv: bool) -> JSON:
        old_meta, cand_meta = old.get("metadata") or {}, candidate.get("metadata") or {}
        cand_rv = cand_meta.get("resourceVersion")
        if cand_rv in (None, ""):
            if require_rv:
                raise api_error(422, "Invalid", f'{rdef.kind} "{old_meta.get("name")}" is invalid: '
                                                "metadata.resourceVersion: Invalid value: 0x0: must be "
                                                "specified for an update", name=old_meta.get("name"),
                                kind=rdef.kind, group=rdef.group)
        elif str(cand_rv) != str(old_meta.get("resourceVersion")):
            raise api_error(409, "Conflict", f'Operation cannot be fulfilled on {rdef.describe()} '
                                             f'"{old_meta.get("name")}": the object has been modified; please '
                                             "apply your changes to the latest version and try again",
                            name=old_meta.get("name"), group=rdef.group, kind=rdef.plural)
        if subresource == "status":
            new = copy.deepcopy(old)
            if candidate.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = copy.deepcopy(candidate["status"])
        else:
            new = copy.deepcopy(candidate)
            if "status" in rdef.subresources:
                if old.get("status") is None:
                    new.pop("status", None)
                else:
                    new["status"] = copy.deepcopy(old["status"])
            meta = new.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise api_error(422, "Invalid", "metadata must be an object")
            for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                          "deletionGracePeriodSeconds", "generateName", "generation", "resourceVersion"):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            if old_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    raise api_error(422, "Invalid", f'{rdef.kind} "{old_meta.get("name")}" is invalid: '
                                                    "metadata.finalizers: Forbidden: no new finalizers can be "
                                                    "added if the object is being deleted")
        new = self._normalize(rdef, new)
        if subresource is None:
            self._validate_meta(rdef, new)
        if rdef.group == "batch" and rdef.plural == "jobs" and subresource is None:
            self._job_update_checks(old, new)
        if rdef.generation and self._spec_view(rdef, new) != self._spec_view(rdef, old):
            new["metadata"]["generation"] = int(old_meta.get("generation") or 1) + 1
        return new

    def _patch(self, target: Target, content_type: str, body: bytes, params: Mapping[str, str]) -> tuple[int, JSON]:
        ctype = content_type.split(";")[0].strip().lower()
        rdef = target.rdef
        try:
            patch = yaml.safe_load(body) if ctype == "application/apply-patch+yaml" else json.loads(body or b"null")
        except (ValueError, yaml.YAMLError) as e:
            raise api_error(400, "BadRequest", f"cannot decode the patch: {e}")
        if ctype == "application/json-patch+json":
            if not isinstance(patch, list):
                raise api_error(400, "BadRequest", "a JSON patch must be a list of operations")

            def mutate(obj: JSON) -> JSON:
                try:
                    return jsonpatch.apply_patch(obj, patch, in_place=False)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                    raise api_error(422, "Invalid", f"the server rejected our request due to an error in our "
                                                    f"request: {type(e).__name__}: {e}")
        elif ctype == "application/merge-patch+json":
            if not isinstance(patch, dict):
                raise api_error(400, "BadRequest", "a merge patch must be a JSON object")

            def mutate(obj: JSON) -> JSON:
                return sem.merge_patch(obj, patch)
        elif ctype == "application/strategic-merge-patch+json":
            if rdef.custom:
                raise api_error(415, "UnsupportedMediaType",
                                'the body of the request was in an unknown format - accepted media types '
                                'include: application/json-patch+json, application/merge-patch+json, '
                                'application/apply-patch+yaml, application/apply-patch+cbor')
            if not isinstance(patch, dict):
                raise api_error(400, "BadRequest", "a strategic merge patch must be a JSON object")

            def mutate(obj: JSON) -> JSON:
                return sem.strategic_merge_patch(obj, patch)
        elif ctype == "application/apply-patch+yaml":
            if not params.get("fieldManager"):
                raise api_error(400, "BadRequest", "PATCH, fieldManager is required for apply requests")
            if not isinstance(patch, dict):
                raise api_error(400, "BadRequest", "an apply patch must be an object")
            key = (self._ns(target), target.name or "")
            if key not in self.store[rdef.storage_key] and target.subresource is None:
                patch.setdefault("metadata", {})["name"] = target.name
                return self._create(target, patch, params)

            def mutate(obj: JSON) -> JSON:  # approximation: no field ownership, no removals
                return sem.strategic_merge_patch(obj, patch)
        else:
            raise api_error(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                                         f"accepted media types include: "
                                                         f"application/json-patch+json, "
                                                         f"application/merge-patch+json, "
                                                         f"application/apply-patch+yaml (got {ctype!r})")
        return 200, self._update(target, mutate, params)

    def _replace(self, target: Target, body: JSON, params: Mapping[str, str]) -> JSON:
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, target.name):
            raise api_error(400, "BadRequest", "the name of the object does not match the name on the URL")
        return self._update(target, lambda old: copy.deepcopy(body), params, require_rv=target.rdef.custom)

    # -- deletion --------------------------------------------------------------------------------

    def _delete_options(self, request: rendering.Request, params: Mapping[str, str]) -> JSON:
        opts = dict(request.data) if isinstance(request.data, dict) else {}
        if "propagationPolicy" in params:
            opts.setdefault("propagationPolicy", params["propagationPolicy"])
        if "dryRun" in params:
            opts.setdefault("dryRun", [params["dryRun"]])
        if opts.get("orphanDependents") is True:
            opts.setdefault("propagationPolicy", "Orphan")
        return opts

    def _delete_request(self, target: Target, request: rendering.Request, params: Mapping[str, str]):
        opts = self._delete_options(request, params)
        obj = self.delete_object(target.rdef, (self._ns(target), target.name or ""), opts)
        return 200, self._present(obj, target.rdef)

    def delete_object(self, rdef: ResourceDef, key: ObjKey, opts: Mapping[str, Any] | None = None) -> JSON:
        """Delete like the API server: finalizers delay it; Orphan/Foreground handled."""
        opts = opts or {}
        old = self.store[rdef.storage_key].get(key)
        if old is None:
            raise self._not_found(rdef, key[1])
        pre = opts.get("preconditions") or {}
        meta = old["metadata"]
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise api_error(409, "Conflict", f"Precondition failed: UID in precondition: {pre['uid']}, "
                                             f"UID in object meta: {meta.get('uid')}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise api_error(409, "Conflict", "Precondition failed: resourceVersion mismatch")
        if "All" in (opts.get("dryRun") or []):
            return old
        policy = opts.get("propagationPolicy")
        if policy == "Orphan":
            self._orphan_dependents(meta.get("uid"))
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers and self._has_dependents(meta.get("uid")):
            finalizers.append("foregroundDeletion")
        if rdef.group == "" and rdef.plural == "namespaces":
            finalizers = finalizers or []  # the namespace controller empties it (system pass)
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = sem.now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["status"] = {"phase": "Terminating"}
                return self._commit(rdef, key, old, new, "MODIFIED")
            return old
        if finalizers:
            if meta.get("deletionTimestamp"):
                if finalizers != list(meta.get("finalizers") or []):
                    new = copy.deepcopy(old)
                    new["metadata"]["finalizers"] = finalizers
                    return self._commit(rdef, key, old, new, "MODIFIED")
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = sem.now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["finalizers"] = finalizers
            if rdef.generation and meta.get("generation"):
                new["metadata"]["generation"] = int(meta["generation"]) + 1
            return self._commit(rdef, key, old, new, "MODIFIED")
        return self._remove(rdef, key, old)

    def _delete_collection(self, target: Target, request: rendering.Request, params: Mapping[str, str]) -> JSON:
        labels, fields = self._selectors(params)
        rdef = target.rdef
        opts = self._delete_options(request, params)
        deleted = []
        for key, obj in list(self.store[rdef.storage_key].items()):
            if self._matches(obj, self._ns(target), labels, fields):
                deleted.append(self._present(self.delete_object(rdef, key, opts), rdef))
        return {"apiVersion": rdef.api_version, "kind": f"{rdef.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": deleted}

    def _dependents(self, uid: str | None) -> list[tuple[ResourceDef, ObjKey, JSON]]:
        if not uid:
            return []
        found = []
        for skey, objs in self.store.items():
            rdef = self._rdef_for_storage(skey)
            if rdef is None:
                continue
            for key, obj in objs.items():
                if any(ref.get("uid") == uid for ref in (obj["metadata"].get("ownerReferences") or [])):
                    found.append((rdef, key, obj))
        return found

    def _has_dependents(self, uid: str | None) -> bool:
        return bool(self._dependents(uid))

    def _orphan_dependents(self, uid: str | None) -> None:
        for rdef, key, obj in self._dependents(uid):
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [r for r in obj["metadata"].get("ownerReferences") or []
                                                  if r.get("uid") != uid]
            new = self._normalize(rdef, new)
            self._commit(rdef, key, obj, new, "MODIFIED")

    # ----------------------------------------------------------------------------------------
    # Controllers that a real control plane always runs: namespace lifecycle, CRD cleanup.

    def _schedule_system_pass(self) -> None:
        if self._system_scheduled or self._stopping:
            return
        if not any(obj["metadata"].get("deletionTimestamp")
                   for skey in (("", "v1", "namespaces"), ("apiextensions.k8s.io", "v1", "customresourcedefinitions"))
                   for obj in self.store[skey].values()):
            return
        self._system_scheduled = True

        async def run() -> None:
            await asyncio.sleep(0.05)
            self._system_scheduled = False
            async with self._lock:
                pending = self.system_pass()
            if pending:
                self._schedule_system_pass_later()

        asyncio.get_running_loop().create_task(run())

    def _schedule_system_pass_later(self) -> None:
        async def later() -> None:
            await asyncio.sleep(0.2)
            self._schedule_system_pass()
        asyncio.get_running_loop().create_task(later())

    def system_pass(self) -> bool:
        """Namespace controller + CRD finalizer. Returns True while anything is still terminating."""
        pending = False
        crd_rdef = self.find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        for key, crd in list(self.store[("apiextensions.k8s.io", "v1", "customresourcedefinitions")].items()):
            if not crd["metadata"].get("deletionTimestamp"):
                continue
            subs = resources_from_crd(crd)
            remaining = 0
            for sub in subs[:1]:
                for okey, obj in list(self.store[sub.storage_key].items()):
                    remaining += 1
                    if not obj["metadata"].get("deletionTimestamp"):
                        self.delete_object(sub, okey, {})
                remaining = len(self.store[sub.storage_key])
            if remaining == 0 and CRD_CLEANUP_FINALIZER in (crd["metadata"].get("finalizers") or []):
                new = copy.deepcopy(crd)
                new["metadata"]["finalizers"] = [f for f in crd["metadata"]["finalizers"] if f != CRD_CLEANUP_FINALIZER]
                if new["metadata"]["finalizers"]:
                    self._commit(crd_rdef, key, crd, new, "MODIFIED")
                else:
                    self._remove(crd_rdef, key, new)
            elif remaining:
                pending = True
        ns_rdef = self.find("", "v1", "namespaces")
        for key, ns in list(self.store[("", "v1", "namespaces")].items()):
            if not ns["metadata"].get("deletionTimestamp"):
                continue
            name = key[1]
            remaining = 0
            for skey, objs in list(self.store.items()):
                rdef = self._rdef_for_storage(skey)
                if rdef is None or not rdef.namespaced:
                    continue
                for okey, obj in list(objs.items()):
                    if okey[0] != name:
                        continue
                    remaining += 1
                    if not obj["metadata"].get("deletionTimestamp"):
                        self.delete_object(rdef, okey, {"propagationPolicy": "Background"})
            remaining = sum(1 for skey, objs in self.store.items()
                            if (self._rdef_for_storage(skey) or ns_rdef).namespaced
                            for okey in objs if okey[0] == name)
            if remaining == 0 and not ns["metadata"].get("finalizers"):
                self._remove(ns_rdef, key, ns)
            else:
                pending = True
        return pending

    # ----------------------------------------------------------------------------------------
    # Garbage collector (ownerReferences), run on demand via gc()

    def gc_pass(self) -> int:
        """One full collection, repeated until nothing changes. Returns how many objects it deleted
        or released."""
        changed_total = 0
        while True:
            changed = 0
            live: dict[str, tuple[ResourceDef, ObjKey, JSON]] = {}
            for skey, objs in self.store.items():
                rdef = self._rdef_for_storage(skey)
                if rdef is None:
                    continue
                for key, obj in objs.items():
                    live[obj["metadata"].get("uid", "")] = (rdef, key, obj)
            for uid, (rdef, key, obj) in list(live.items()):
                meta = obj["metadata"]
                if self.store[rdef.storage_key].get(key) is not obj:
                    continue  # changed during this pass
                finalizers = meta.get("finalizers") or []
                if meta.get("deletionTimestamp") and "orphan" in finalizers:
                    self._orphan_dependents(uid)
                    self._release_finalizer(rdef, key, "orphan")
                    changed += 1
                    continue
                if meta.get("deletionTimestamp") and "foregroundDeletion" in finalizers:
                    deps = self._dependents(uid)
                    for drdef, dkey, dobj in deps:
                        if not dobj["metadata"].get("deletionTimestamp"):
                            self.delete_object(drdef, dkey, {"propagationPolicy": "Foreground"})
                            changed += 1
                    if not self._dependents(uid):
                        self._release_finalizer(rdef, key, "foregroundDeletion")
                        changed += 1
                    continue
                refs = meta.get("ownerReferences") or []
                if not refs or meta.get("deletionTimestamp"):
                    continue
                def owner_alive(ref: JSON) -> bool:
                    owner = live.get(ref.get("uid", ""))
                    if owner is None or self.store[owner[0].storage_key].get(owner[1]) is None:
                        return False
                    owner_ns = owner[1][0]
                    return owner_ns is None or owner_ns == key[0]  # no cross-namespace owners
                if not any(owner_alive(ref) for ref in refs):
                    self.delete_object(rdef, key, {"propagationPolicy": "Background"})
                    changed += 1
            changed_total += changed
            if not changed:
                return changed_total

    def _release_finalizer(self, rdef: ResourceDef, key: ObjKey, finalizer: str) -> None:
        obj = self.store[rdef.storage_key].get(key)
        if obj is None:
            return
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer]
        if not new["metadata"]["finalizers"] and new["metadata"].get("deletionTimestamp"):
            self._remove(rdef, key, new)
        else:
            self._commit(rdef, key, obj, self._normalize(rdef, new), "MODIFIED")

    # ----------------------------------------------------------------------------------------
    # Watch

    async def _serve_watch_stream(self, raw: aiohttp.web.BaseRequest, target: Target,
                                  params: Mapping[str, str]) -> aiohttp.web.StreamResponse:
        rdef = target.rdef
        labels, fields = self._selectors(params, target.name)
        namespace = self._ns(target)
        since_param = params.get("resourceVersion") or ""
        send_initial = params.get("sendInitialEvents") == "true"
        timeout = params.get("timeoutSeconds")
        watcher = Watcher(rdef.storage_key, asyncio.Queue())
        initial: list[tuple[str, JSON]] = []
        replay: list[LogEntry] = []
        expired: str | None = None
        async with self._lock:
            snapshot_rv = self.rv
            if send_initial or since_param in ("", "0"):
                initial = [("ADDED", obj) for _, obj in sorted(self.store[rdef.storage_key].items(),
                                                               key=lambda kv: (kv[0][0] or "", kv[0][1]))
                           if self._matches(obj, namespace, labels, fields)]
            else:
                try:
                    since = int(since_param)
                except ValueError:
                    raise api_error(400, "BadRequest", f"invalid resource version: {since_param!r}")
                if since < self.log_floor:
                    expired = f"too old resource version: {since} ({self.log_floor})"
                else:
                    replay = [e for e in self.log if e.rv > since and e.storage_key == rdef.storage_key]
            self.watchers.add(watcher)
        response = aiohttp.web.StreamResponse(status=200, headers={
            "Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        try:
            await response.prepare(raw)
            if expired:
                await self._write_event(response, "ERROR", {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": expired, "reason": "Expired", "code": 410})
                return response
            for etype, obj in initial:
                await self._write_event(response, etype, self._present(obj, rdef))
            if send_initial:
                await self._write_event(response, "BOOKMARK", {
                    "kind": rdef.kind, "apiVersion": rdef.api_version,
                    "metadata": {"resourceVersion": str(snapshot_rv),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}})
            for entry in replay:
                await self._write_watch_entry(response, entry, rdef, namespace, labels, fields)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + float(timeout) if timeout else None
            while not self._stopping:
                wait = 1.0 if deadline is None else min(1.0, deadline - loop.time())
                if wait <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(watcher.queue.get(), timeout=wait)
                except (asyncio.TimeoutError, TimeoutError):
                    if raw.transport is None or raw.transport.is_closing():
                        break
                    continue
                if entry is None:
                    break
                await self._write_watch_entry(response, entry, rdef, namespace, labels, fields)
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self.watchers.discard(watcher)
        try:
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return response

    async def _write_watch_entry(self, response, entry: LogEntry, rdef: ResourceDef, namespace, labels, fields):
        now = self._matches(entry.obj, namespace, labels, fields)
        before = entry.old is not None and self._matches(entry.old, namespace, labels, fields)
        etype = entry.type
        if etype == "MODIFIED":
            if now and not before:
                etype = "ADDED"
            elif before and not now:
                etype = "DELETED"
            elif not now:
                return
        elif etype == "DELETED":
            if not (now or before):
                return
        elif not now:
            return
        await self._write_event(response, etype, self._present(entry.obj, rdef))

    @staticmethod
    async def _write_event(response: aiohttp.web.StreamResponse, etype: str, obj: JSON) -> None:
        await response.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

    def stop_watches(self) -> None:
        self._stopping = True
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)

    # ----------------------------------------------------------------------------------------
    # Discovery (overrides kmock's: core groupVersion, verbs, singular names, subresource kinds)

    def _served_defs(self) -> list[ResourceDef]:
        return list(self.defs.values())

    async def _serve_root(self, request: rendering.Request) -> rendering.Payload:
        paths = {"/api", "/api/v1", "/apis", "/version", "/openapi/v2", "/openapi/v3", "/healthz", "/livez", "/readyz"}
        for rdef in self._served_defs():
            if rdef.group:
                paths.add(f"/apis/{rdef.group}")
                paths.add(f"/apis/{rdef.group}/{rdef.version}")
        return {"paths": sorted(paths)}

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return dict(SERVER_VERSION)

    async def _serve_api(self, request: rendering.Request) -> rendering.Payload:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}]}

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for rdef in self._served_defs():
            if rdef.group and rdef.version not in groups.setdefault(rdef.group, []):
                groups[rdef.group].append(rdef.version)
        return groups

    def _group_doc(self, group: str, versions: list[str]) -> JSON:
        storage = next((r.storage_version for r in self._served_defs() if r.group == group), versions[0])
        preferred = storage if storage in versions else sorted(versions)[-1]
        return {"name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                "preferredVersion": {"groupVersion": f"{group}/{preferred}", "version": preferred}}

    async def _serve_apis(self, request: rendering.Request) -> rendering.Payload:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_doc(g, vs) for g, vs in sorted(self._groups().items())]}

    async def _serve_group(self, request: rendering.Request) -> rendering.Payload:
        group = request.resource.group if request.resource else None
        versions = self._groups().get(group or "")
        if not versions:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        return dict(self._group_doc(group, versions), kind="APIGroup", apiVersion="v1")

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        group = request.resource.group if request.resource else ""
        version = request.resource.version if request.resource else "v1"
        defs = [r for r in self._served_defs() if r.group == group and r.version == version]
        if not defs:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        resources = []
        for rdef in sorted(defs, key=lambda r: r.plural):
            resources.append({"name": rdef.plural, "singularName": rdef.singular, "namespaced": rdef.namespaced,
                              "kind": rdef.kind, "verbs": list(ALL_VERBS),
                              **({"shortNames": list(rdef.short_names)} if rdef.short_names else {}),
                              **({"categories": list(rdef.categories)} if rdef.categories else {})})
            for sub in sorted(rdef.subresources):
                resources.append({"name": f"{rdef.plural}/{sub}", "singularName": "", "namespaced": rdef.namespaced,
                                  "kind": rdef.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    def _serve_openapi_v2(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # An empty but valid OpenAPI v2 document: no schemas, so clients skip client-side
        # validation and strategic-merge metadata. client-go asks for protobuf: encode the gnostic
        # openapi_v2.Document by hand (field 1 "swagger", field 2 "info" {1 title, 2 version}).
        if "protobuf" in raw.headers.get("Accept", ""):
            def field(num: int, payload: bytes) -> bytes:
                return bytes([(num << 3) | 2, len(payload)]) + payload
            doc = field(1, b"2.0") + field(2, field(1, b"Kubernetes") + field(2, b"v1.35.0"))
            return aiohttp.web.Response(body=doc, content_type="application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
        return aiohttp.web.json_response({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.35.0"},
                                          "paths": {}, "definitions": {}})

    def _serve_openapi_v3(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.path.rstrip("/") == "/openapi/v3":
            return aiohttp.web.json_response({"paths": {}})
        return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                          "reason": "NotFound", "code": 404, "message": "not found"}, status=404)

    # Anything kmock routes to its own object handlers never reaches them (see __call__),
    # but keep them harmless if a test calls them through kmock's DSL.
    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:  # pragma: no cover
        raise api_error(404, "NotFound", "not served through the DSL")

    _serve_fetch = _serve_create = _serve_update = _serve_delete = _serve_list

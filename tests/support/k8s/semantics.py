"""Pure helpers for the fake API server: patch flavours, selectors, JSONPath, timestamps.

Nothing here talks HTTP or touches the emulator's state; everything is unit-testable.
"""
from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Mapping
from typing import Any

# --------------------------------------------------------------------------------------------
# Time


def now_rfc3339() -> str:
    """Kubernetes' metav1.Time format: RFC 3339, UTC, second precision, 'Z'."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------------------------
# RFC 7386 JSON merge patch (application/merge-patch+json)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, ``null`` deletes, everything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --------------------------------------------------------------------------------------------
# Strategic merge patch (application/strategic-merge-patch+json), approximated.
#
# The real server reads patch strategies and merge keys from the Go types of built-in kinds.
# We keep a table by field name (not by full path), good enough for Jobs, Pods, Secrets,
# Namespaces, Events and metadata. Directives understood: ``$patch: replace|delete|merge``,
# ``$deleteFromPrimitiveList/<field>``, ``$setElementOrder/<field>`` (ignored),
# ``$retainKeys`` (honoured: keys not listed are dropped).

SMP_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
SMP_PRIMITIVE_MERGE = {"finalizers"}  # lists of scalars merged as sets


def _merge_key_for(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        sample = next((i for i in items if isinstance(i, Mapping)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return SMP_MERGE_KEYS.get(field)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, Mapping) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _smp_list(key, result[key], value)
        elif isinstance(value, Mapping):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(field: str, old: list[Any], new: list[Any]) -> list[Any]:
    if field in SMP_PRIMITIVE_MERGE:
        merged = list(old)
        for item in new:
            if item not in merged:
                merged.append(item)
        return merged
    key = _merge_key_for(field, old + new)
    if key is None or not all(isinstance(i, Mapping) for i in old + new):
        return [i for i in copy.deepcopy(new) if not (isinstance(i, Mapping) and i.get("$patch"))]
    if any(isinstance(i, Mapping) and i.get("$patch") == "replace" for i in new):
        return [copy.deepcopy(i) for i in new if i.get("$patch") != "replace"]
    merged = [copy.deepcopy(i) for i in old]
    for item in new:
        idx = next((n for n, o in enumerate(merged) if o.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del merged[idx]
        elif idx is None:
            merged.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            merged[idx] = strategic_merge_patch(merged[idx], item)
    return merged


# --------------------------------------------------------------------------------------------
# Label and field selectors

_LABEL_REQ = re.compile(
    r"""^\s*(?:
        (?P<notexists>!\s*(?P<nkey>[^\s=!,()]+))
      | (?P<key>[^\s=!,()]+)\s*(?:
            (?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)
          | \s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)
        )?
    )\s*$""",
    re.X,
)


def _split_selector(selector: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p for p in parts if p.strip()]


class SelectorError(ValueError):
    pass


def parse_label_selector(selector: str | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """Parse ``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` into (key, op, values) requirements."""
    reqs: list[tuple[str, str, tuple[str, ...]]] = []
    for part in _split_selector(selector or ""):
        m = _LABEL_REQ.match(part)
        if not m:
            raise SelectorError(f"unable to parse requirement: {part!r}")
        if m.group("notexists"):
            reqs.append((m.group("nkey"), "!", ()))
        elif m.group("op"):
            op = "!=" if m.group("op") == "!=" else "="
            reqs.append((m.group("key"), op, (m.group("value"),)))
        elif m.group("setop"):
            values = tuple(v.strip() for v in m.group("values").split(",") if v.strip())
            reqs.append((m.group("key"), m.group("setop"), values))
        else:
            reqs.append((m.group("key"), "exists", ()))
    return reqs


def match_labels(reqs: list[tuple[str, str, tuple[str, ...]]], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    for key, op, values in reqs:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
        if op == "=" and labels.get(key) != values[0]:
            return False
        if op == "!=" and present and labels[key] == values[0]:
            return False
        if op == "in" and labels.get(key) not in values:
            return False
        if op == "notin" and present and labels[key] in values:
            return False
    return True


def parse_field_selector(selector: str | None) -> list[tuple[str, str, str]]:
    reqs: list[tuple[str, str, str]] = []
    for part in _split_selector(selector or ""):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        reqs.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return reqs


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return "" if cur is None else str(cur)


def match_fields(reqs: list[tuple[str, str, str]], obj: Mapping[str, Any]) -> bool:
    for path, op, value in reqs:
        actual = _field_value(obj, path)
        if op == "=" and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
    return True


# --------------------------------------------------------------------------------------------
# A small JSONPath subset for additionalPrinterColumns: ``.a.b``, ``.a[0]``, ``.a[*].b``,
# ``.a[?(@.type=="Ready")].status``.

_JP_TOKEN = re.compile(r"\.([A-Za-z0-9_\-$]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")


def jsonpath(obj: Any, path: str) -> list[Any]:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _JP_TOKEN.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for item in current:
            if m.group(1) is not None:
                if isinstance(item, Mapping) and m.group(1) in item:
                    nxt.append(item[m.group(1)])
            elif m.group(2) is not None:
                if isinstance(item, list):
                    if m.group(2) == "*":
                        nxt.extend(item)
                    elif int(m.group(2)) < len(item):
                        nxt.append(item[int(m.group(2))])
            else:
                if isinstance(item, list):
                    for el in item:
                        if isinstance(el, Mapping) and _field_value(el, m.group(3)) == m.group(4):
                            nxt.append(el)
        current = nxt
    return current


# --------------------------------------------------------------------------------------------
# Names and labels, as k8s.io/apimachinery/pkg/util/validation checks them.

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def name_problems(name: str, dns_label: bool = False) -> list[str]:
    """IsDNS1123Subdomain (most objects: <= 253) or IsDNS1123Label (namespaces: <= 63)."""
    limit, pattern = (63, _DNS_LABEL) if dns_label else (253, _DNS_SUBDOMAIN)
    problems = []
    if len(name) > limit:
        problems.append(f"must be no more than {limit} characters")
    if not pattern.match(name):
        problems.append("a lowercase RFC 1123 " + ("label" if dns_label else "subdomain") + " must consist of lower case "
                        "alphanumeric characters, '-'" + ("" if dns_label else " or '.'") + ", and must start and end "
                        "with an alphanumeric character")
    return problems


def label_problems(labels: Mapping[str, Any] | None, path: str) -> list[str]:
    """ValidateLabels: qualified-name keys (optional DNS-subdomain prefix) and label values."""
    problems = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
            problems.append(f'{path}: Invalid value: "{key}": prefix part must be a lowercase RFC 1123 subdomain')
        if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
            problems.append(f'{path}: Invalid value: "{key}": name part must be no more than 63 characters and consist '
                            "of alphanumeric characters, '-', '_' or '.', starting and ending with one")
        if not isinstance(value, str):
            problems.append(f"{path}: Invalid value: {value!r}: a label value must be a string")
        elif len(value) > 63:
            problems.append(f'{path}: Invalid value: "{value}": must be no more than 63 characters')
        elif not _LABEL_VALUE.match(value):
            problems.append(f'{path}: Invalid value: "{value}": a valid label must be an empty string or consist of '
                            "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")
    return problems

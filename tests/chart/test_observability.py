"""Observability: the operator's metrics port in the chart, the optional ServiceMonitor and
PrometheusRule, docs/prometheus-rules.yaml, docs/grafana-dashboard.json and docs/observability.md,
all checked against the metrics the operator really exports (keymigration.kube.metrics)."""
from __future__ import annotations

import json
import os
import re

import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest

from keymigration import cli, logs
from keymigration.kube import metrics as km_metrics

from .conftest import CHART, NAMESPACE, ROOT, find, one
from .test_chart import FULLNAME, K8S_VERSIONS, env_of, operator_container

DOCS = ROOT / "docs"
MONITORING = "monitoring.coreos.com/v1"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"critical", "warning", "info"}
ALERTS = {
    "KeyMigrationStalled",
    "KeyMigrationObjectsFailed",
    "KeyMigrationThrottling",
    "KeyMigrationStalledCondition",
    "KeyMigrationOperatorReconcileErrors",
    "KeyMigrationOperatorDown",
}
# Series Prometheus makes itself, allowed in queries besides the operator's own.
PROMETHEUS_SERIES = {"up"}

OBSERVABILITY = {
    "metrics": {
        "serviceMonitor": {
            "enabled": True,
            "interval": "15s",
            "scrapeTimeout": "10s",
            "labels": {"release": "kube-prometheus-stack"},
            "relabelings": [{"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
            "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "keymigration_status_writes_total"}],
        },
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    }
}
RENDERS = {
    "cluster": OBSERVABILITY,
    "namespaced": {**OBSERVABILITY, "watchNamespaces": ["a", "b"], "worker": {"namespaces": ["c"]}},
}


# -- what the operator exports ----------------------------------------------------------------


def fake_status() -> tuple[dict, list[dict]]:
    """One KeyMigration mid-way: a running prefix, a completed one, a pending one."""
    status = {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Progressing"},
            {"type": "Reconciling", "status": "True", "reason": "Progressing"},
            {"type": "Stalled", "status": "False", "reason": "Progressing"},
            {"type": "Suspended", "status": "False", "reason": "NotSuspended"},
        ],
        "prefixCounts": {"total": 3, "pending": 1, "running": 1, "suspended": 0, "completed": 1, "failed": 0},
        "totals": {"scanned": 120, "migrated": 100, "skipped": 15, "failed": 5, "planned": 0, "verified": 0, "expected": 400},
        "prefixes": [
            {"prefix": "2024/", "job": "mig-2024", "state": "Running",
             "counters": {"scanned": 20, "migrated": 18, "skipped": 0, "failed": 2}},
            {"prefix": "2023/", "job": "mig-2023", "state": "Completed",
             "counters": {"scanned": 100, "migrated": 82, "skipped": 15, "failed": 3}},
            {"prefix": "2025/", "job": "mig-2025", "state": "Pending", "counters": {}},
        ],
    }
    progresses = [
        {"metadata": {"name": "mig-2024"}, "status": {"rate": 12.5, "faults": {"throttled": 4, "server_errors": 1, "connection_errors": 0}}},
        {"metadata": {"name": "mig-2023"}, "status": {"rate": 0.0, "faults": {"throttled": 2}}},
    ]
    return status, progresses


def exposition() -> str:
    """The /metrics text of an operator that reconciled one KeyMigration (the fake status)."""
    try:
        operator_metrics = km_metrics.OperatorMetrics(stall_seconds=900)
    except Exception as error:  # the operator could not start its metrics either
        pytest.fail(f"keymigration.kube.metrics.OperatorMetrics() fails: {type(error).__name__}: {error}", pytrace=False)
    status, progresses = fake_status()
    operator_metrics.migrations.record("payments", "archive", status, progresses)
    for result in ("ok", "error"):
        operator_metrics.reconciles.labels(result).inc()
    operator_metrics.reconcile_seconds.observe(0.2)
    operator_metrics.status_writes.inc()
    return generate_latest(operator_metrics.registry).decode()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ")
TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$", re.M)


def exported_samples() -> dict[str, set[str]]:
    """Every sample name on /metrics (as Prometheus stores it: counters with _total, histograms as
    _bucket/_sum/_count) and the label names it carries."""
    samples: dict[str, set[str]] = {}
    for line in exposition().splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
            samples.setdefault(match.group(1), set()).update(labels)
    return samples


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return exported_samples()


@pytest.fixture(scope="module")
def families() -> dict[str, str]:
    """Metric family name -> type, from the exposition's # TYPE lines (counters named with _total)."""
    return dict(TYPE.findall(exposition()))


def test_the_operator_exports_the_documented_metrics(exported, families):
    # Every collector produced samples from the fake status (an empty family would make the
    # dashboard and rule checks below vacuous for it).
    for name in families:
        assert any(s == name or s.startswith(name + "_") for s in exported), f"{name}: no samples"
    assert {
        "keymigration_objects_total", "keymigration_objects_expected", "keymigration_prefix_objects_total",
        "keymigration_prefixes", "keymigration_phase", "keymigration_ready",
        "keymigration_last_progress_timestamp_seconds", "keymigration_stalled", "keymigration_worker_faults_total",
        "keymigration_worker_objects_per_second", "keymigration_reconciles_total",
        "keymigration_reconcile_duration_seconds_bucket", "keymigration_reconcile_duration_seconds_sum",
        "keymigration_reconcile_duration_seconds_count", "keymigration_status_writes_total",
    } <= exported.keys()


def test_metric_labels_are_bounded(exported):
    """No per-object label: only these label names, and prefix only per running prefix."""
    allowed = {"namespace", "migration", "outcome", "prefix", "state", "phase", "kind", "result", "le"}
    for name, labels in exported.items():
        assert labels <= allowed, f"{name}: unexpected labels {labels - allowed}"
    assert {n for n, labels in exported.items() if "prefix" in labels} == {"keymigration_prefix_objects_total"}
    text = exposition()
    assert 'prefix="2024/"' in text  # the running prefix
    assert 'prefix="2023/"' not in text and 'prefix="2025/"' not in text  # completed, pending: none
    assert "a.bin" not in text


# -- a small PromQL reader (promtool is not available) -------------------------------------------

STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
    "inf", "nan", "atan2",
}
COUNTER_FUNCTIONS = re.compile(r"\b(rate|irate|increase|resets)\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def balanced(text: str) -> bool:
    pairs, stack = {")": "(", "}": "{", "]": "["}, []
    for char in text:
        if char in "({[":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: not functions or aggregations (followed by a
    parenthesis), not label names (in matchers and by/without/on/ignoring/group_* lists), not
    keywords, numbers, durations or string literals."""
    text = STRINGS.sub('""', expr)
    assert balanced(text), f"unbalanced brackets in {expr!r}"
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call or name in KEYWORDS:
            continue
        names.add(name)
    return names


def test_the_promql_reader():
    expr = ('sum by (le, namespace) (rate(foo_bucket{a="b(c", d=~"e|f"}[$__rate_interval])) / on (x) group_left '
            "bar offset 5m > 1e3 and histogram_quantile(0.95, baz_sum) or absent(up{job=~\".*km.*\"}) "
            "unless max without (y) (qux) * 2.5")
    assert promql_metric_names(expr) == {"foo_bucket", "bar", "baz_sum", "up", "qux"}
    assert promql_metric_names("clamp_min(a_total - b, 0) / (c > 0)") == {"a_total", "b", "c"}
    assert promql_metric_names("time() - d") == {"d"}
    with pytest.raises(AssertionError, match="unbalanced"):
        promql_metric_names("sum(rate(x[5m])")
    with pytest.raises(AssertionError, match="unbalanced"):
        promql_metric_names('x{a="b"')


def check_promql(expr: str, exported: dict[str, set[str]], where: str) -> set[str]:
    names = promql_metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - exported.keys() - PROMETHEUS_SERIES
    assert not unknown, f"{where}: {sorted(unknown)} not exported by the operator (expr {expr!r})"
    for function, name in COUNTER_FUNCTIONS.findall(STRINGS.sub('""', expr)):
        assert name.endswith(COUNTER_SUFFIXES), f"{where}: {function}() of {name}, which is not a counter"
    for name in names:
        if name.endswith("_bucket"):
            assert "histogram_quantile" in expr and re.search(r"\bby\s*\([^)]*\ble\b", expr), (
                f"{where}: {name} outside histogram_quantile(..., sum by (le) (...))"
            )
    return names


# -- the chart: metrics port, Service, args ------------------------------------------------------


def parse_args(container: dict, monkeypatch):
    for name in [n for n in os.environ if n.startswith("KEYMIGRATION_")]:
        monkeypatch.delenv(name)
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value)
    return cli.build_parser().parse_args(container["args"])


def ports_by_name(ports: list[dict]) -> dict[str, dict]:
    return {p["name"]: p for p in ports}


def test_defaults_serve_metrics_and_render_no_monitoring_objects(helm, monkeypatch):
    docs = helm.template()
    assert not [d for d in docs if d["apiVersion"] == MONITORING]
    container = operator_container(docs)
    ports = ports_by_name(container["ports"])
    assert ports["metrics"] == {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}
    args = parse_args(container, monkeypatch)
    assert args.metrics_port == 9090 and args.stall_seconds == 900
    service = ports_by_name(one(docs, "Service", FULLNAME, NAMESPACE)["spec"]["ports"])
    assert service["metrics"] == {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    assert service["health"]["targetPort"] == "health"


def test_chart_defaults_are_the_operator_defaults(monkeypatch):
    for name in [n for n in os.environ if n.startswith("KEYMIGRATION_")]:
        monkeypatch.delenv(name)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]
    args = cli.build_parser().parse_args(["operator", "--all-namespaces"])
    assert args.metrics_port == values["port"] and args.stall_seconds == values["stallSeconds"]
    assert values["enabled"] is True
    assert values["serviceMonitor"]["enabled"] is False and values["prometheusRule"]["enabled"] is False


def test_metrics_port_and_stall_seconds_come_from_values(helm, monkeypatch):
    docs = helm.template({"metrics": {"port": 9102, "stallSeconds": 3600}})
    container = operator_container(docs)
    assert ports_by_name(container["ports"])["metrics"]["containerPort"] == 9102
    args = parse_args(container, monkeypatch)
    assert args.metrics_port == 9102 and args.stall_seconds == 3600
    assert "--stall-seconds" in container["args"] and "3600" in container["args"]  # not 3.6e+03
    service = ports_by_name(one(docs, "Service", FULLNAME, NAMESPACE)["spec"]["ports"])
    assert service["metrics"]["port"] == 9102 and service["metrics"]["targetPort"] == "metrics"


def test_metrics_disabled_passes_port_0_and_exposes_nothing(helm, monkeypatch):
    docs = helm.template({"metrics": {"enabled": False}})
    container = operator_container(docs)
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert parse_args(container, monkeypatch).metrics_port == 0
    assert [p["name"] for p in one(docs, "Service", FULLNAME, NAMESPACE)["spec"]["ports"]] == ["health"]
    assert not [d for d in docs if d["apiVersion"] == MONITORING]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"metrics": {"port": 9095}, "operator": {"healthPort": 9095}}, "metrics.port and operator.healthPort"),
        ({"metrics": {"port": 8443}, "service": {"port": 8443}}, "metrics.port and service.port"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "metrics.serviceMonitor.enabled needs metrics.enabled"),
        ({"metrics": {"enabled": False, "prometheusRule": {"enabled": True}}}, "metrics.prometheusRule.enabled needs metrics.enabled"),
    ],
)
def test_inconsistent_metrics_values_fail(helm, values, message):
    proc = helm.run("template", "km", str(CHART), values=values)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "values, unknown",
    [
        ({"metrics": {"prot": 9090}}, "prot"),
        ({"metrics": {"serviceMonitor": {"intervall": "1m"}}}, "intervall"),
        ({"metrics": {"prometheusRule": {"failedObjects": {"treshold": 3}}}}, "treshold"),
        ({"metrics": {"serviceMonitor": {"relabelings": [{"target_label": "x"}]}}}, "target_label"),
    ],
)
def test_values_schema_rejects_unknown_metrics_keys(helm, values, unknown):
    proc = helm.run("template", "km", str(CHART), values=values)
    assert proc.returncode != 0 and unknown in proc.stderr and "additional properties" in proc.stderr.lower(), proc.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"metrics": {"port": 80}},
        {"metrics": {"stallSeconds": 0}},
        {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
        {"metrics": {"prometheusRule": {"stalledFor": "5"}}},
        {"metrics": {"prometheusRule": {"throttling": {"threshold": -1}}}},
        {"metrics": {"prometheusRule": {"alertLabels": {"team-name": "x"}}}},
    ],
)
def test_values_schema_rejects_bad_metrics_values(helm, values):
    assert helm.run("template", "km", str(CHART), values=values).returncode != 0


@pytest.mark.parametrize("sets", [[], ["--set", "watchNamespaces={a,b}"]], ids=["cluster", "namespaced"])
def test_helm_lint_strict_with_monitoring(helm, sets):
    proc = helm.run("lint", "--strict", str(CHART), "--set", "metrics.serviceMonitor.enabled=true",
                    "--set", "metrics.prometheusRule.enabled=true", *sets)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- the chart with ServiceMonitor and PrometheusRule -------------------------------------------


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_rendered_with_monitoring_validates(helm, render):
    docs = helm.template(RENDERS[render])
    assert {d["kind"] for d in docs if d["apiVersion"] == MONITORING} == {"ServiceMonitor", "PrometheusRule"}
    for doc in docs:
        if doc["apiVersion"].split("/")[0].endswith("keymigration.io") or doc["apiVersion"] == MONITORING:
            continue  # custom resources: kubernetes-validate only knows built-in kinds (checked below)
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def check_service_monitor(monitor: dict, service: dict, deployment: dict) -> None:
    assert monitor["apiVersion"] == MONITORING
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}
    # It finds the Service: same namespace, matching labels...
    assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    selector = spec["selector"]
    assert set(selector) == {"matchLabels"} and selector["matchLabels"]
    assert selector["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["jobLabel"] in service["metadata"]["labels"]
    # ... and a port of it by name, which leads to the container's metrics port.
    service_ports = ports_by_name(service["spec"]["ports"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_ports = ports_by_name(container["ports"])
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in service_ports
        assert service_ports[endpoint["port"]]["targetPort"] in container_ports
        assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
        assert endpoint["honorLabels"] is True  # the metrics' own namespace label wins
        assert DURATION.match(endpoint["interval"])
        for relabel in endpoint.get("relabelings", []) + endpoint.get("metricRelabelings", []):
            assert set(relabel) <= {"action", "sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement"}


@pytest.mark.parametrize("render", sorted(RENDERS))
def test_service_monitor_scrapes_the_metrics_port_of_the_operator_service(helm, render):
    docs = helm.template(RENDERS[render])
    monitor = one(docs, "ServiceMonitor", FULLNAME, NAMESPACE)
    service = one(docs, "Service", FULLNAME, NAMESPACE)
    deployment = one(docs, "Deployment", FULLNAME, NAMESPACE)
    check_service_monitor(monitor, service, deployment)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert ports_by_name(service["spec"]["ports"])["metrics"]["port"] == 9090
    sm_values = OBSERVABILITY["metrics"]["serviceMonitor"]
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "10s"
    assert endpoint["relabelings"] == sm_values["relabelings"]
    assert endpoint["metricRelabelings"] == sm_values["metricRelabelings"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # The Service selects the operator pod.
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_service_monitor_defaults(helm):
    docs = helm.template({"metrics": {"serviceMonitor": {"enabled": True}}})
    (endpoint,) = one(docs, "ServiceMonitor", FULLNAME, NAMESPACE)["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "30s", "honorLabels": True}
    assert find(docs, "PrometheusRule") == []


def test_watch_namespaces_change_nothing_for_metrics(helm):
    cluster, namespaced = helm.template(RENDERS["cluster"]), helm.template(RENDERS["namespaced"])
    for kind in ("ServiceMonitor", "PrometheusRule", "Service"):
        assert one(cluster, kind, FULLNAME, NAMESPACE) == one(namespaced, kind, FULLNAME, NAMESPACE)
    assert ports_by_name(operator_container(cluster)["ports"]) == ports_by_name(operator_container(namespaced)["ports"])


def rules_of(prometheus_rule: dict) -> list[dict]:
    return [rule for group in prometheus_rule["spec"]["groups"] for rule in group["rules"]]


def check_prometheus_rule(prometheus_rule: dict, exported: dict[str, set[str]]) -> None:
    assert prometheus_rule["apiVersion"] == MONITORING and prometheus_rule["kind"] == "PrometheusRule"
    groups = prometheus_rule["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    rules = rules_of(prometheus_rule)
    assert {r["alert"] for r in rules} == ALERTS and len(rules) == len(ALERTS)
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]
        for text in rule["annotations"].values():
            assert balanced(text) and text.count("{{") == text.count("}}"), rule["alert"]
            # An aggregated expression keeps only its `by` labels: the annotations may use no other.
            kept = {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]) for label in group.split(",")}
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert not kept or label in kept, f"{rule['alert']}: annotation uses $labels.{label}, lost by the aggregation"
        check_promql(rule["expr"], exported, rule["alert"])


def test_prometheus_rule_has_complete_rules_on_exported_metrics(helm, exported):
    docs = helm.template(OBSERVABILITY)
    prometheus_rule = one(docs, "PrometheusRule", FULLNAME, NAMESPACE)
    check_prometheus_rule(prometheus_rule, exported)
    assert prometheus_rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = {r["alert"]: r for r in rules_of(prometheus_rule)}
    assert rules["KeyMigrationStalled"]["expr"] == "keymigration_stalled == 1"
    assert 'result="error"' in rules["KeyMigrationOperatorReconcileErrors"]["expr"]
    assert rules["KeyMigrationOperatorReconcileErrors"]["for"] == "10m"
    assert 'kind="throttled"' in rules["KeyMigrationThrottling"]["expr"]
    assert "absent(up{" in rules["KeyMigrationOperatorDown"]["expr"]
    for phase in ("Stalled", "Failed", "Invalid"):
        assert phase in rules["KeyMigrationStalledCondition"]["expr"]
        assert phase in km_metrics.PHASES


def test_prometheus_rule_thresholds_and_labels_come_from_values(helm, exported):
    values = {"metrics": {"prometheusRule": {
        "enabled": True,
        "alertLabels": {"team": "storage"},
        "stalledFor": "30m",
        "failedObjects": {"threshold": 25, "window": "1h", "for": "5m"},
        "throttling": {"threshold": 0.5, "window": "10m", "for": "1h"},
        "conditionFor": "1m",
        "reconcileErrorsFor": "20m",
        "operatorDownFor": "2m",
    }}}
    prometheus_rule = one(helm.template(values), "PrometheusRule", FULLNAME, NAMESPACE)
    check_prometheus_rule(prometheus_rule, exported)
    rules = {r["alert"]: r for r in rules_of(prometheus_rule)}
    assert all(r["labels"]["team"] == "storage" and r["labels"]["severity"] for r in rules.values())
    failed = rules["KeyMigrationObjectsFailed"]
    assert failed["expr"].endswith('{outcome="failed"}[1h])) > 25') and failed["for"] == "5m"
    assert "1h" in failed["annotations"]["description"]
    throttling = rules["KeyMigrationThrottling"]
    assert throttling["expr"].endswith('{kind="throttled"}[10m])) > 0.5') and throttling["for"] == "1h"
    assert {name: rules[name]["for"] for name in ("KeyMigrationStalled", "KeyMigrationStalledCondition",
            "KeyMigrationOperatorReconcileErrors", "KeyMigrationOperatorDown")} == {
        "KeyMigrationStalled": "30m", "KeyMigrationStalledCondition": "1m",
        "KeyMigrationOperatorReconcileErrors": "20m", "KeyMigrationOperatorDown": "2m",
    }


def test_big_thresholds_render_as_valid_promql(helm, exported):
    values = {"metrics": {"prometheusRule": {"enabled": True, "failedObjects": {"threshold": 2000000}}}}
    rules = {r["alert"]: r for r in rules_of(one(helm.template(values), "PrometheusRule", FULLNAME, NAMESPACE))}
    assert rules["KeyMigrationObjectsFailed"]["expr"].endswith("> 2000000")  # not 2e+06


# -- docs/prometheus-rules.yaml ------------------------------------------------------------------


def normalized(rule: dict) -> dict:
    rule = json.loads(json.dumps(rule))
    rule["expr"] = " ".join(rule["expr"].split())
    rule["annotations"] = {k: " ".join(v.split()) for k, v in rule["annotations"].items()}
    return rule


def test_docs_prometheus_rules_are_the_charts_rules(helm, exported):
    (doc,) = [d for d in yaml.safe_load_all((DOCS / "prometheus-rules.yaml").read_text()) if d]
    check_prometheus_rule(doc, exported)
    assert doc["metadata"]["name"] and "namespace" in doc["metadata"]
    chart = one(helm.template({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule", FULLNAME, NAMESPACE)
    assert [g["name"] for g in doc["spec"]["groups"]] == [g["name"] for g in chart["spec"]["groups"]]
    assert [normalized(r) for r in rules_of(doc)] == [normalized(r) for r in rules_of(chart)]


# -- docs/grafana-dashboard.json -----------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((DOCS / "grafana-dashboard.json").read_text())


def all_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    return panels


def test_dashboard_shape_and_variables(dashboard):
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "migration"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        assert query == variable["definition"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match and match.group(2) == name, query
    assert '$namespace' in variables["migration"]["definition"]


def test_dashboard_panels_have_unique_ids_the_datasource_variable_and_a_sane_layout(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"].strip() and target["refId"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in all_panels(dashboard) for t in p.get("targets", [])]


def test_every_dashboard_query_uses_exported_metrics(dashboard, exported):
    referenced = set()
    for title, expr in dashboard_exprs(dashboard):
        names = check_promql(expr, exported, f"panel {title!r}")
        referenced |= names
        # Migration metrics follow the namespace and migration variables.
        if any({"namespace", "migration"} <= exported.get(n, set()) for n in names):
            assert 'namespace=~"$namespace"' in expr and 'migration=~"$migration"' in expr, title
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"]).group(1)
            referenced |= check_promql(selector, exported, f"variable {variable['name']}")
    # What the dashboard is for: every migration metric family is shown somewhere.
    for name in ("keymigration_objects_total", "keymigration_objects_expected", "keymigration_prefix_objects_total",
                 "keymigration_prefixes", "keymigration_phase", "keymigration_stalled",
                 "keymigration_worker_faults_total", "keymigration_worker_objects_per_second",
                 "keymigration_reconciles_total", "keymigration_reconcile_duration_seconds_bucket"):
        assert name in referenced, f"the dashboard shows no {name}"


def test_dashboard_has_the_progress_eta_and_failure_panels(dashboard):
    panels = {p["title"]: p for p in all_panels(dashboard)}

    def exprs(title: str) -> str:
        return " ".join(t["expr"] for t in panels[title]["targets"])

    assert panels["ETA"]["fieldConfig"]["defaults"]["unit"] == "s"
    assert "keymigration_objects_expected" in exprs("ETA") and 'outcome="scanned"' in exprs("ETA")
    assert panels["Progress"]["fieldConfig"]["defaults"]["unit"] == "percent"
    assert "keymigration_objects_expected" in exprs("Progress") and 'outcome="scanned"' in exprs("Progress")
    assert 'outcome="failed"' in exprs("Failed objects per running prefix") and "prefix" in exprs("Failed objects per running prefix")
    assert "histogram_quantile(0.95" in exprs("Reconcile duration")
    assert 'result' in exprs("Reconciles per second by result")
    for outcome in ("migrated", "skipped", "failed"):
        assert outcome in exprs("Objects per second by outcome")


# -- docs/observability.md -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def guide() -> str:
    return (DOCS / "observability.md").read_text()


def test_guide_documents_exactly_the_exported_metrics(guide, exported, families):
    mentioned = set(re.findall(r"\bkeymigration_[a-z_]+\b", guide))
    # Each name in the guide is a series on /metrics, or a histogram's base name.
    histograms = {name for name, kind in families.items() if kind == "histogram"}
    unknown = mentioned - exported.keys() - histograms
    assert not unknown, f"docs/observability.md names metrics the operator does not export: {sorted(unknown)}"
    for name in families:
        if name.endswith("_created"):
            continue  # the Python client's creation timestamps of the operator's own counters
        assert f"`{name}`" in guide, f"docs/observability.md does not document {name}"


def test_guide_documents_events_logs_flags_and_values(guide):
    source = (ROOT / "operator" / "keymigration" / "kube" / "reconcile.py").read_text()
    reasons = dict((reason, kind) for kind, reason in re.findall(r'Event\("(Normal|Warning)", "(\w+)"', source))
    assert reasons.keys() >= {"Validated", "JobCreated", "PrefixCompleted", "PrefixCompletedWithFailures", "PrefixFailed",
                              "Suspended", "Resumed", "Succeeded", "TooManyFailures", "InvalidSpec"}
    for reason, kind in reasons.items():
        assert f"| `{reason}` | {kind} |" in guide, f"Event reason {reason} ({kind}) is not in the Events table"
    for field in ("time", "level", "logger", "message", *logs.STRUCTURED_FIELDS):
        assert f"`{field}`" in guide, f"log field {field}"
    for text in ("--metrics-port", "KEYMIGRATION_METRICS_PORT", "--stall-seconds", "KEYMIGRATION_STALL_SECONDS",
                 "--log-format text|json", "honorLabels", "maxJobs"):
        assert text in guide
    values = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]
    for key in ("enabled", "port", "stallSeconds"):
        assert f"`metrics.{key}` | `{values[key]}`".replace("True", "true") in guide
    for alert in ALERTS:
        assert f"`{alert}`" in guide
    for key in values["prometheusRule"]:
        if key != "enabled":
            assert f"metrics.prometheusRule.{key}" in guide or f".{key}`" in guide, key


def test_guide_alert_table_shows_the_default_exprs(guide):
    (doc,) = [d for d in yaml.safe_load_all((DOCS / "prometheus-rules.yaml").read_text()) if d]
    for rule in rules_of(doc):
        row = next(line for line in guide.splitlines() if line.startswith(f"| `{rule['alert']}` |"))
        assert f"`{rule['expr'].replace('|', chr(92) + '|')}`" in row, rule["alert"]
        assert f"| {rule['for']} | {rule['labels']['severity']} |" in row, rule["alert"]


def test_guide_links_resolve(guide):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", guide):
        if "://" not in target:
            assert (DOCS / target).exists(), f"observability.md: broken link {target}"

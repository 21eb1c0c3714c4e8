"""Redis' memory limit everywhere Redis is shipped, and the alert on it.

`irouter redis`, Compose and the chart's bundled Redis all run with a `maxmemory` and the
`noeviction` policy (every job key has a TTL, so a `volatile-*` policy would evict live jobs;
`noeviction` refuses writes instead, loudly). The chart's PrometheusRule is checked against
the prometheus-operator CRD's model, its expressions are parsed, and then evaluated by a
small PromQL evaluator over what the API's `/metrics` exposes, for Redis below, between and
above the thresholds; docs/operations.md quotes the same expressions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api import metrics as api_metrics
from tasks.metrics import ClusterReading, RedisMemory
from tasks.redis_server import DEFAULT_MAXMEMORY, EVICTION_POLICY
from tests.infra.conftest import (
    CHART,
    FULLNAME,
    ROOT,
    by_kind,
    helm_module,
    load_yaml,
    render_chart,
)

RULE_ON = {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}
UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 10**6, "mb": 1024**2, "g": 10**9, "gb": 1024**3}
KUBE_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 10**6, "G": 10**9}


def redis_bytes(size: str) -> int:
    """A Redis memory size (`700mb`, `1gb`, `1048576`) in bytes, as Redis reads it."""
    found = re.fullmatch(r"(\d+)([kmg]b?)?", size.strip().lower())
    assert found, f"not a Redis memory size: {size!r}"
    return int(found[1]) * UNITS[found[2] or ""]


def kube_bytes(quantity: str) -> int:
    found = re.fullmatch(r"(\d+)([KMG]i?)?", quantity)
    assert found, quantity
    return int(found[1]) * KUBE_UNITS.get(found[2] or "", 1)


def option(argv: list[str], flag: str) -> str:
    return str(argv[argv.index(flag) + 1])


# -- the limit, wherever Redis runs ------------------------------------------------------------


def test_every_shipped_redis_has_a_memory_limit_and_never_evicts() -> None:
    assert EVICTION_POLICY == "noeviction" and redis_bytes(DEFAULT_MAXMEMORY) > 0
    compose = load_yaml(ROOT / "compose.yaml")["services"]["redis"]["command"]
    assert option(compose, "--maxmemory-policy") == EVICTION_POLICY
    assert redis_bytes(option(compose, "--maxmemory")) > 0
    conf = (ROOT / "infra" / "redis" / "redis.conf").read_text().splitlines()
    assert f"maxmemory-policy {EVICTION_POLICY}" in conf  # what Compose and the chart load


def test_the_bundled_redis_keeps_its_data_under_its_memory_limit() -> None:
    values = load_yaml(CHART / "values.yaml")["redis"]
    sts = by_kind(render_chart(), "StatefulSet")[f"{FULLNAME}-redis"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    argv = container["args"]
    assert option(argv, "--maxmemory") == values["maxmemory"]
    assert option(argv, "--maxmemory-policy") == EVICTION_POLICY
    limit = kube_bytes(container["resources"]["limits"]["memory"])
    # the rest is for the AOF rewrite's fork, client buffers and fragmentation
    assert redis_bytes(values["maxmemory"]) <= 0.75 * limit
    bigger = render_chart({"redis": {"maxmemory": "3gb"}})
    args = by_kind(bigger, "StatefulSet")[f"{FULLNAME}-redis"]["spec"]["template"]["spec"]
    assert option(args["containers"][0]["args"], "--maxmemory") == "3gb"


@pytest.mark.parametrize(
    "values",
    [
        {"redis": {"maxmemory": "0"}},  # no limit: refused
        {"redis": {"maxmemory": "lots"}},
        {"prometheusRule": {"redisMemory": {"warning": 80}}},  # a share, not a percentage
        {"prometheusRule": {"redisMemory": {"for": "five minutes"}}},
        {"prometheusRule": {"enabled": True, "severity": "page"}},
    ],
)
def test_bad_memory_values_are_refused(values: dict[str, Any]) -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmError):
        render_chart(values)


# -- the alert ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rule() -> dict[str, Any]:
    """The chart's PrometheusRule, with the flag on."""
    (found,) = by_kind(render_chart(RULE_ON), "PrometheusRule").values()
    return found


def alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}


def test_the_rule_is_off_by_default_and_matches_the_crd(rule: dict[str, Any]) -> None:
    assert not by_kind(render_chart(), "PrometheusRule")
    model = pytest.importorskip(
        "cloudcoil.models.prometheus_operator.v1",
        reason="cloudcoil-models-prometheus-operator (the CRD's models) is not installed",
    )
    parsed = model.PrometheusRule.model_validate(rule)
    assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == rule
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(alerts(rule)) == {"RouterRedisMemoryHigh", "RouterRedisMemoryFull"}
    with pytest.raises(ValueError):  # the model can fail: a rule without its expression
        broken = {**rule, "spec": {"groups": [{"name": "x", "rules": [{"alert": "A"}]}]}}
        model.PrometheusRule.model_validate(broken)


def test_the_chart_lints_with_the_rule_on() -> None:
    helm = helm_module()
    report = helm.lint(str(CHART), RULE_ON, strict=True, kube_version="v1.29.0")
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2]


def exposition(used: int, limit: int) -> str:
    """What the API's /metrics says of a Redis holding `used` bytes of `limit`."""
    reading = ClusterReading({}, {}, {}, RedisMemory(used, limit))
    services = SimpleNamespace(
        registry=SimpleNamespace(get=lambda: SimpleNamespace(backends=list)),
        redis=None,
        liveness=None,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(api_metrics.ClusterCollector(services))  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api_metrics, "read_cluster", lambda *_: reading)
        return generate_latest(registry).decode()


def scraped(used: int, limit: int, pods: int = 2) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name as Prometheus stores them: one scrape per API pod, each with the
    target labels Prometheus adds."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for pod in range(pods):
        target = {"job": "router-api", "instance": f"10.0.0.{pod}:8000", "pod": f"api-{pod}"}
        for family in text_string_to_metric_families(exposition(used, limit)):
            for s in family.samples:
                found.setdefault(s.name, []).append(({**s.labels, **target}, s.value))
    return found


Vector = dict[frozenset[tuple[str, str]], float]


def evaluate(expr: Any, samples: dict[str, list[tuple[dict[str, str], float]]]) -> Any:
    """A PromQL evaluator for what these rules use: selectors, numbers, parentheses, `/`
    between vectors with the same labels, a comparison filtering a vector by a number, and
    `max without (...)`. Anything else fails, so a rule that outgrows it is noticed."""
    kind = type(expr).__name__
    if kind == "NumberLiteral":
        return float(expr.val)
    if kind == "ParenExpr":
        return evaluate(expr.expr, samples)
    if kind == "VectorSelector":
        return {frozenset(labels.items()): v for labels, v in samples.get(expr.name, [])}
    if kind == "AggregateExpr" and str(expr.op) == "max" and "Without" in str(expr.modifier.type):
        out: Vector = {}
        for labels, v in evaluate(expr.expr, samples).items():
            key = frozenset((k, x) for k, x in labels if k not in set(expr.modifier.labels))
            out[key] = max(out.get(key, v), v)
        return out
    if kind == "BinaryExpr" and expr.modifier is None:
        lhs, rhs, op = evaluate(expr.lhs, samples), evaluate(expr.rhs, samples), str(expr.op)
        if op == ">" and isinstance(lhs, dict) and isinstance(rhs, float):
            return {k: v for k, v in lhs.items() if v > rhs}
        if op == "/" and isinstance(lhs, dict) and isinstance(rhs, dict):
            return {k: v / rhs[k] for k, v in lhs.items() if k in rhs}
    raise AssertionError(f"not evaluated here: {expr}")


def firing(rule: dict[str, Any], used: int, limit: int) -> dict[str, Vector]:
    promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed")
    found = {}
    for name, alert in alerts(rule).items():
        result = evaluate(promql.parse(alert["expr"]), scraped(used, limit))
        if result:
            found[name] = result
    return found


def test_the_alerts_fire_on_what_the_api_exposes(rule: dict[str, Any]) -> None:
    gib = 1024**3
    assert firing(rule, gib // 2, gib) == {}
    high = firing(rule, int(0.85 * gib), gib)
    assert list(high) == ["RouterRedisMemoryHigh"]
    # one alert for the Redis, not one per API pod that reports it
    [(labels, share)] = high["RouterRedisMemoryHigh"].items()
    assert dict(labels) == {"job": "router-api"} and share == pytest.approx(0.85)
    assert set(firing(rule, int(0.97 * gib), gib)) == {
        "RouterRedisMemoryHigh",
        "RouterRedisMemoryFull",
    }
    assert firing(rule, 5 * gib, 0) == {}  # maxmemory 0: no limit to be near


def test_the_operations_guide_quotes_the_limits_and_the_alerts(rule: dict[str, Any]) -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    compose = load_yaml(ROOT / "compose.yaml")["services"]["redis"]["command"]
    chart = load_yaml(CHART / "values.yaml")["redis"]["maxmemory"]
    rows = {
        "`irouter redis`": DEFAULT_MAXMEMORY,
        "Compose": option(compose, "--maxmemory"),
        "the chart's bundled Redis": chart,
    }
    for where, limit in rows.items():
        assert re.search(rf"^\| {re.escape(where)}.* \| `{limit}`", guide, re.M), where
    for name, alert in alerts(rule).items():
        assert name in guide
        assert f"`{alert['expr']}`" in guide, f"docs/operations.md: {name}'s expression"


def test_the_alerts_read_metrics_the_api_exposes(rule: dict[str, Any]) -> None:
    promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed")

    def names(expr: Any) -> Iterator[str]:
        if type(expr).__name__ == "VectorSelector":
            yield expr.name
        for part in ("lhs", "rhs", "expr"):
            if hasattr(expr, part):
                yield from names(getattr(expr, part))

    used = {n for a in alerts(rule).values() for n in names(promql.parse(a["expr"]))}
    assert used == {"router_redis_memory_used_bytes", "router_redis_memory_max_bytes"}
    assert used <= set(scraped(1, 2))

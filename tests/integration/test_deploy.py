"""The operator's kit in deploy/: every criproxy metric the Grafana board and the example
alert rules query is served by a running criproxy's /metrics."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import REPO, ContainerdProcess, Criproxy

DEPLOY = Path(REPO) / "deploy"
_NAME = re.compile(r"\bcriproxy_[a-z0-9_]+")
_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("",), "gauge": ("",)}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, shared_containerd: ContainerdProcess
) -> Iterator[set[str]]:
    """The sample names a fresh criproxy's /metrics offers (families with no sample yet
    count: a counter of errors has none until the first error)."""
    base = Path(tmp_path_factory.mktemp("deploy", numbered=True))
    proxy = Criproxy(
        base / "cpx",
        containerd=shared_containerd.socket,
        config={"metrics": {"address": "127.0.0.1:0"}},
    )
    proxy.start()
    try:
        proxy.runtime.Version(api_pb2.VersionRequest())
        (serving,) = [r for r in proxy.log_records() if r.get("event") == "serving"]
        text = urllib.request.urlopen(f"http://{serving['metrics']}/metrics", timeout=10).read()
    finally:
        proxy.stop()
    names: set[str] = set()
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.update(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    yield names


def _exprs(node: Any) -> Iterator[str]:
    """Every PromQL expression in a dashboard or rules document."""
    if isinstance(node, dict):
        for key, value in node.items():
            promql = key in ("expr", "definition") or (key == "query" and "(" in str(value))
            if promql and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def _check(document: Any, served: set[str]) -> set[str]:
    exprs = list(_exprs(document))
    assert exprs, "no query found"
    used = {name for expr in exprs for name in _NAME.findall(expr)}
    missing = used - served
    assert not missing, f"queried but not on /metrics: {sorted(missing)}"
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        assert expr.count("{") == expr.count("}"), expr
    return used


def test_every_metric_of_the_grafana_board_is_served(served: set[str]) -> None:
    board = json.loads((DEPLOY / "grafana" / "criproxy.json").read_text())
    used = _check(board, served)
    for wanted in (
        "criproxy_cri_requests_total",
        "criproxy_cri_request_duration_seconds_bucket",
        "criproxy_image_pull_bytes_total",
        "criproxy_event_loop_lag_seconds_bucket",
    ):
        assert wanted in used, f"the board shows no {wanted}"
    assert {p["type"] for p in board["panels"]} <= {"row", "timeseries"}


def test_every_metric_of_the_example_alerts_is_served(served: set[str]) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "criproxy-rules.yaml").read_text())
    _check(rules, served)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "CriproxyContainerdUnreachable",
        "CriproxyPlegCallsSlow",
        "CriproxyPullsFailing",
    } <= alerts

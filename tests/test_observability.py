"""The Grafana dashboard and Prometheus config refer to metrics the services really export."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from bge_triton.launcher import TritonOptions, free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/dashboards/bge-triton.json"
PROMQL_FUNCTIONS = {"histogram_quantile", "sum", "rate", "by", "clamp_min", "le", "status", "model", "type"}


def _metric_names(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {n for n in names if n not in PROMQL_FUNCTIONS and not n.isdigit() and "_" in n}


def test_dashboard_metrics_exist_in_the_proxy_and_triton_scrapes(triton: TritonOptions, spawn: Callable) -> None:
    port = free_port()
    proxy = spawn(["serve-proxy", "--triton-url", triton.grpc_url, "--port", str(port)], port=port, ready_path="/ready")
    assert httpx.post(f"{proxy.url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a", "b"]}).is_success
    httpx.post(f"{proxy.url}/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": []})  # one error
    exported = httpx.get(f"{proxy.url}/metrics").text + httpx.get(triton.metrics_url).text
    series = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", exported, flags=re.M))
    dashboard = json.loads(DASHBOARD.read_text())
    wanted = {name for panel in dashboard["panels"] for t in panel["targets"] for name in _metric_names(t["expr"])}
    cpu_host_missing = {n for n in wanted if n.startswith("nv_gpu_")}  # exported on GPU hosts only
    assert cpu_host_missing == {"nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_utilization"}
    assert wanted - cpu_host_missing <= series, sorted(wanted - cpu_host_missing - series)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("latency", "requests per second", "tokens", "error rate", "queue", "gpu memory"):
        assert topic in titles


def test_compose_provisions_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    # Every replica of each scaled compose service, found through Docker's DNS (one A record per replica).
    targets = {
        (name, sd["port"]) for job in prometheus["scrape_configs"] for sd in job["dns_sd_configs"]
        for name in sd["names"] if sd["type"] == "A"
    }  # fmt: skip
    assert targets == {("proxy", 8080), ("triton", 8002)}
    assert compose["services"]["triton"]["expose"] == ["8000", "8001", "8002"]
    assert {"proxy", "triton", "prometheus", "grafana"} <= set(compose["services"])
    grafana = compose["services"]["grafana"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/bge-triton.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])

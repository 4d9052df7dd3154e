"""deploy/k8s: every manifest validates against the Kubernetes OpenAPI schemas, and wires what the README promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import dockerfile_entrypoint

from bge_triton.cli import build_parser
from bge_triton.client.proxy.dns_replicas import parse_dns_url

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "bge-triton"
# Schemas shipped by kubernetes-validate; a recent release plus the oldest still widely run.
K8S_VERSIONS = ["1.30.0", "1.33.0"]
NOT_K8S_RESOURCES = {"kustomization.yaml"}  # kustomize's own file, not an API object: not validated
OPTIONAL = K8S / "optional"
CLUSTER_SCOPED = {"Namespace"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NOT_K8S_RESOURCES)
RESOURCES = {(d["kind"], d["metadata"]["name"]): d for name in MANIFESTS for d in _docs(K8S / name)}
OPTIONAL_HPAS = {d["metadata"]["name"]: d for d in _docs(OPTIONAL / "hpa-custom-metrics.yaml")}


def kustomize_build(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize` does with this kustomization, offline (no kubectl or kustomize binary in Debian 12
    or on PyPI that supports `labels:`): every listed resource file must exist, its objects get the `images`
    rewrites and `labels` pairs, and every namespaced object's namespace must be created by the set itself."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images", "labels"}, "unsupported field"
    images = {i["name"]: i for i in kustomization.get("images", [])}
    pairs = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    built: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = folder / resource
        assert path.is_file(), f"kustomization lists {resource}, which does not exist"
        for doc in _docs(path):
            doc["metadata"].setdefault("labels", {}).update(pairs)
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                name, _, tag = container["image"].partition(":")
                if name in images:
                    rewrite = images[name]
                    container["image"] = f"{rewrite.get('newName', name)}:{rewrite.get('newTag', tag)}"
            built.append(doc)
    namespaces = {d["metadata"]["name"] for d in built if d["kind"] == "Namespace"}
    for doc in built:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") in namespaces, (doc["kind"], doc["metadata"]["name"])
    return built


def _get(kind: str, name: str) -> dict[str, Any]:
    return RESOURCES[(kind, name)]


def _container(deployment: str) -> dict[str, Any]:
    (container,) = _get("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_validates_strictly(manifest: str, version: str) -> None:
    for doc in _docs(K8S / manifest):
        # strict: unknown fields (typos such as `readinessprobe`) fail too
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == MANIFESTS  # optional/ is not part of the default set


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_offline_kustomize_build_of_the_default_set(version: str) -> None:
    """`kubectl apply -k deploy/k8s` used to fail where no `monitoring` namespace existed (the adapter rules)."""
    built = kustomize_build(K8S)
    assert len(built) == len(RESOURCES)
    assert {d["metadata"].get("namespace", NAMESPACE) for d in built} == {NAMESPACE}
    for doc in built:
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "bge-triton"
    images = {
        c["image"]
        for d in built
        for c in [*d.get("spec", {}).get("template", {}).get("spec", {}).get("initContainers", []),
                  *d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]
    }  # fmt: skip
    # a registry in front of every image: bare bge-triton/... names would be pulled from Docker Hub, where they
    # do not exist
    assert images == {
        "registry.example.com/bge-triton/tritonserver:24.10",
        "registry.example.com/bge-triton/proxy:0.1.0",
        "registry.example.com/bge-triton/tools:0.1.0",
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_optional_hpas_validate(version: str) -> None:
    for doc in OPTIONAL_HPAS.values():
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert len([d for d in yaml.safe_load_all(out.stdout) if d]) == len(RESOURCES)


def test_everything_is_in_the_namespace() -> None:
    for (kind, name), doc in RESOURCES.items():
        if kind == "Namespace":
            assert name == NAMESPACE
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, (kind, name)


def test_triton_deployment() -> None:
    deployment = _get("Deployment", "bge-triton-triton")
    pod = deployment["spec"]["template"]["spec"]
    c = _container("bge-triton-triton")
    assert c["image"] == "bge-triton/tritonserver:24.10"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert c["args"] == compose["services"]["triton"]["command"]  # same server flags as the compose file
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])

    named_ports = {p["name"]: p["containerPort"] for p in c["ports"]}

    def probe(name: str) -> tuple[str, int]:
        get = c[name]["httpGet"]
        return get["path"], named_ports.get(get["port"], get["port"])

    assert named_ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert probe("readinessProbe") == ("/v2/health/ready", 8000)
    assert probe("livenessProbe") == ("/v2/health/live", 8000)
    assert probe("startupProbe")[1] == 8000
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model loading takes minutes

    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    repo = next(m for m in mounts.values() if m["mountPath"] == "/models")
    assert repo["readOnly"] is True
    claim = volumes[repo["name"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in RESOURCES
    shm = next(m for m in mounts.values() if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"
    assert pod["terminationGracePeriodSeconds"] > 30  # > --exit-timeout-secs=30
    # one GPU per pod: a surge pod would wait for the GPU the old pod holds, and the rollout would stall
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    # Triton reads the repository once: its init container waits for the export Job's first config.pbtxt
    (wait,) = pod["initContainers"]
    assert "/models/*/config.pbtxt" in " ".join(wait["command"])
    assert volumes[mounts["trt-cache"]["name"]] and mounts["trt-cache"]["mountPath"] == "/trt-cache"


def test_export_job_fills_the_repository() -> None:
    job = _get("Job", "bge-triton-export")
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "bge-triton/tools:0.1.0"
    assert dockerfile_entrypoint(ROOT / "deploy/tools.Dockerfile") == ["bge-triton"]
    args = build_parser().parse_args(c["args"])
    assert (args.command, args.target, str(args.repository)) == ("export", "container-gpu", "/models")
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == "/models" and not mount.get("readOnly")
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "bge-triton-model-repository"


def _service_ports(name: str) -> dict[int, Any]:
    service = _get("Service", name)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    return {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}


def _selects(service: str, deployment: str) -> bool:
    labels = _get("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    selector = _get("Service", service)["spec"]["selector"]
    return selector.items() <= labels.items()


def test_triton_service() -> None:
    assert set(_service_ports("bge-triton-triton")) == {8000, 8001, 8002}
    assert _selects("bge-triton-triton", "bge-triton-triton")


def test_proxy_deployment_and_service() -> None:
    deployment = _get("Deployment", "bge-triton-proxy")
    pod = deployment["spec"]["template"]["spec"]
    c = _container("bge-triton-proxy")
    assert c["image"] == "bge-triton/proxy:0.1.0"
    # The image's ENTRYPOINT (deploy/proxy.Dockerfile) + these args must parse with the real CLI.
    args = build_parser().parse_args([*dockerfile_entrypoint(ROOT / "deploy/proxy.Dockerfile")[1:], *c["args"]])
    assert args.command == "serve-proxy"
    assert (args.host, args.proxy_port) == ("0.0.0.0", 8080)
    urls = args.triton_url if isinstance(args.triton_url, list) else [args.triton_url]  # repeatable or single
    (url,) = urls
    # Every Triton pod through the headless Service (client-side round-robin), not pinned connections; over HTTP
    assert parse_dns_url(url) == ("bge-triton-triton-headless", 8000) and args.protocol == "http"
    headless = _get("Service", "bge-triton-triton-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert {p["port"]: p["targetPort"] for p in headless["spec"]["ports"]} == {8000: "http", 8001: "grpc"}
    assert _selects("bge-triton-triton-headless", "bge-triton-triton")
    assert pod["terminationGracePeriodSeconds"] > args.grace_period >= 30

    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[c["readinessProbe"]["httpGet"]["port"]] == 8080
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])

    env = {e["name"]: e for e in c["env"]}
    ref = env["BGE_TRITON_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] and ref["key"]

    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert _service_ports("bge-triton-proxy") == {8080: "http"}
    assert _selects("bge-triton-proxy", "bge-triton-proxy")


@pytest.mark.parametrize(
    ("name", "custom_metric"),
    [("bge-triton-proxy", "bge_proxy_in_flight_requests"),
     ("bge-triton-triton", "nv_inference_queue_duration_us_per_request")],
)  # fmt: skip
def test_hpa_scales_on_a_custom_metric_with_cpu_fallback(name: str, custom_metric: str) -> None:
    default = _get("HorizontalPodAutoscaler", name)  # CPU only: without the adapter, a custom metric blocks scale-down
    assert [m["type"] for m in default["spec"]["metrics"]] == ["Resource"]
    hpa = OPTIONAL_HPAS[name]
    assert {k: v for k, v in hpa["spec"].items() if k != "metrics"} == {
        k: v for k, v in default["spec"].items() if k != "metrics"
    }
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert ("Deployment", name) in RESOURCES
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metrics = hpa["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [custom_metric]
    assert pods[0]["target"]["type"] == "AverageValue"
    cpu = [m["resource"] for m in metrics if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["target"]["type"] == "Utilization"
    # the same Deployment's containers must request CPU, or utilisation is undefined
    assert _container(name)["resources"]["requests"]["cpu"]


def test_adapter_rules_produce_the_hpa_metrics() -> None:
    """Helm values of the prometheus-adapter chart (its own ConfigMap is rendered from `rules.custom`)."""
    values = yaml.safe_load((OPTIONAL / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["default"] is False
    rules = values["rules"]["custom"]
    by_name = {r["name"]["as"]: r for r in rules}
    hpa_metrics = {
        m["pods"]["metric"]["name"] for d in OPTIONAL_HPAS.values() for m in d["spec"]["metrics"] if m["type"] == "Pods"
    }
    assert hpa_metrics == set(by_name)
    for rule in rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    assert "bge_proxy_in_flight_requests" in by_name["bge_proxy_in_flight_requests"]["seriesQuery"]
    query = by_name["nv_inference_queue_duration_us_per_request"]["metricsQuery"]
    numerator, denominator = query.split("/", 1)
    assert "rate(nv_inference_queue_duration_us{" in numerator
    assert "rate(nv_inference_request_success{" in denominator


@pytest.mark.parametrize("name", ["bge-triton-proxy", "bge-triton-triton"])
def test_pod_disruption_budget(name: str) -> None:
    pdb = _get("PodDisruptionBudget", name)
    assert pdb["spec"]["minAvailable"] == 1
    labels = _get("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_persistent_volume_claim() -> None:
    pvc = _get("PersistentVolumeClaim", "bge-triton-model-repository")
    assert pvc["spec"]["resources"]["requests"]["storage"]

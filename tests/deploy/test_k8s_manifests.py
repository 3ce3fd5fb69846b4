"""Offline checks of k8s/: render every kustomization, validate each object against its schema, and
cross-check the manifests against clustergnn's own config and code.

* Rendering: ``kubectl kustomize`` (base and overlays).  Without kubectl, the base alone is loaded
  from its files (resources + configMapGenerator) and the overlays are skipped.
* Custom resources (Strimzi, KubeRay): the CRD's ``openAPIV3Schema`` for the manifest's apiVersion,
  from ``../shared/k8s-schemas/``, made strict (unknown fields are errors, as with kubectl's server-side
  strict field validation) with ``x-kubernetes-int-or-string`` and ``nullable`` translated.  CEL rules
  (``x-kubernetes-validations``) are not evaluated: none of them constrains a field set here except
  through the types checked anyway.
* Standard kinds: ``kubernetes-validate`` (strict) for the oldest and newest Kubernetes we target;
  the RayCluster's pod templates are checked the same way, wrapped in a ``PodTemplate``.
* Cross-checks: config.json parses with ``Config.from_dict``; topic names and partition counts match
  it; selectors match the pod templates they must (and only those); ports, mounts, Secrets, pins.
* Several nodes and a node lost: snapshot storage every Ray pod reaches (S3 credentials or one
  ReadWriteMany claim at the same path), GCS fault tolerance wired to the Redis rendered beside it,
  workers on distinct nodes, owners (and spares) that still fit after losing the largest worker,
  readiness on the gateway's cluster-following health service and liveness on one that is not.

No cluster, no network.  ``test_healthcheck_probe`` starts a TLS gRPC server on 127.0.0.1, and
``test_probes_follow_the_gateway_health`` a real gateway (over a fake backend) there.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to read the manifests (pip install -e .[test])")

from clustergnn.config import Config  # noqa: E402

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = ROOT.parent / "shared" / "k8s-schemas"
TARGETS = ["base", "overlays/dev", "overlays/gpu", "overlays/shared-volume"]
NAMESPACE = "clustergnn"
K8S_VERSIONS = ("1.32.0", "1.37.0")  # kubectl on the image is 1.32; newest kubernetes-validate knows
CRD_GROUPS = ("ray.io", "kafka.strimzi.io")

# Secrets the manifests reference but never contain: the cluster's operator creates them (README,
# "Secrets").  Each must be documented there with its command.
OPERATOR_CREATED_SECRETS = {
    "clustergnn-gateway-tls": "kubectl create secret tls clustergnn-gateway-tls",
    "clustergnn-gateway-tokens": "kubectl create secret generic clustergnn-gateway-tokens",
    "clustergnn-redis": "kubectl create secret generic clustergnn-redis",
    "clustergnn-snapshots-s3": "kubectl create secret generic clustergnn-snapshots-s3",
}
# Targets whose cluster must survive losing one worker's node (dev has one worker on one node).
SURVIVES_NODE_LOSS = ["base", "overlays/gpu", "overlays/shared-volume"]
HEALTH_READY_SERVICE = "clustergnn.v1.EmbeddingService"  # follows the owners (actors/gateway/health.py)
HEALTH_LIVE_SERVICE = "clustergnn.v1.AdminService"  # SERVING while the gateway process runs


# --------------------------------------------------------------------------------------------- loading
def _kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = _kubectl()
    if kubectl is not None:
        out = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"kubectl kustomize k8s/{target} failed:\n{out.stderr}"
        return tuple(d for d in yaml.safe_load_all(out.stdout) if d)
    if target != "base":
        pytest.skip(f"kubectl is not installed: k8s/{target} needs `kubectl kustomize` to render its patches")
    return tuple(_load_base_without_kubectl())


def _load_base_without_kubectl() -> list[dict[str, Any]]:
    """The base's resources and generated ConfigMaps, the way kustomize would emit them (no patches)."""
    base = K8S / "base"
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = [d for f in kust.get("resources", []) for d in yaml.safe_load_all((base / f).read_text()) if d]
    for gen in kust.get("configMapGenerator", []):
        data = {Path(f).name: (base / f).read_text() for f in gen.get("files", [])}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for d in docs:
        if d["kind"] != "Namespace":
            d["metadata"].setdefault("namespace", kust["namespace"])
    return docs


@pytest.fixture(params=TARGETS)
def docs(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    return _render(request.param)


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def _all(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _config(docs: tuple[dict[str, Any], ...]) -> Config:
    raw = json.loads(_one(docs, "ConfigMap", "clustergnn-config")["data"]["config.json"])
    return Config.from_dict(raw)


def _ray(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return _one(docs, "RayCluster", "clustergnn")


def _head(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return _ray(docs)["spec"]["headGroupSpec"]["template"]


def _workers(docs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return _ray(docs)["spec"].get("workerGroupSpecs", [])


def _pod_templates(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """Every pod template in the render, by a readable name."""
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        if d["kind"] == "RayCluster":
            out[f"RayCluster/{d['metadata']['name']}/head"] = d["spec"]["headGroupSpec"]["template"]
            for g in d["spec"].get("workerGroupSpecs", []):
                out[f"RayCluster/{d['metadata']['name']}/{g['groupName']}"] = g["template"]
        elif d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out[f"{d['kind']}/{d['metadata']['name']}"] = d["spec"]["template"]
    return out


def _ray_pod_templates(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _pod_templates(docs).items() if k.startswith("RayCluster/")}


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _selected(selector: dict[str, Any], docs: tuple[dict[str, Any], ...]) -> set[str]:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here, got {selector}"
    labels = selector.get("matchLabels", {})
    return {name for name, t in _pod_templates(docs).items() if _matches(labels, t["metadata"].get("labels", {}))}


def _gateway_container(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The container that runs `clustergnn serve` (the driver, with the gateway in it)."""
    running = [
        (name, c)
        for name, t in _pod_templates(docs).items()
        for c in t["spec"]["containers"]
        if "clustergnn serve" in " ".join(c.get("command", []) + c.get("args", []))
    ]
    assert len(running) == 1, f"exactly one container must run `clustergnn serve`, found {[n for n, _ in running]}"
    return running[0][1]


# --------------------------------------------------------------------------------------------- schemas
@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of every CRD provided."""
    if not SCHEMAS.is_dir():
        pytest.skip(f"CRD schemas not found at {SCHEMAS} (see ../shared/k8s-schemas/README.md)")
    out = {}
    for f in sorted(SCHEMAS.glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=_LOADER)  # 2 MB of YAML: the C loader when there is one
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served") and not v.get("deprecated"):
                out[(f"{group}/{v['name']}", kind)] = _strict(v["schema"]["openAPIV3Schema"])
    return out


def _strict(schema: Any) -> Any:
    """A structural CRD schema as plain JSON Schema: unknown fields rejected (unless the schema says
    x-kubernetes-preserve-unknown-fields), int-or-string and nullable spelled out."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {k: _strict(v) for k, v in schema.items()}
    if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    # Only objects with declared properties: a bare `type: object` is the CRD's ObjectMeta, which the
    # API server validates itself (kubernetes-validate checks it for the standard kinds).
    if "properties" in s and "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    return s


def _crd_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    key = (doc["apiVersion"], doc["kind"])
    schema = _crd_schemas().get(key)
    if schema is None:
        served = sorted(f"{a} {k}" for a, k in _crd_schemas() if k == doc["kind"])
        return [f"no served, non-deprecated CRD schema for {key}; served: {served or 'none (kind unknown offline)'}"]
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def _kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install -e .[test]); standard kinds unchecked",
    )


def _k8s_errors(doc: dict[str, Any], version: str) -> list[str]:
    kv = _kubernetes_validate()
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as e:
        return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kv.SchemaNotFoundError as e:
        return [e.message]
    return []


def _is_custom(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].split("/")[0] in CRD_GROUPS


# ------------------------------------------------------------------------------------------ the render
def test_render_is_well_formed(docs: tuple[dict[str, Any], ...]) -> None:
    assert docs
    seen = set()
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
        key = (d["kind"], d["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{key} is not in namespace {NAMESPACE}"
    assert ("Namespace", NAMESPACE) in seen
    assert not _all(docs, "Secret"), "Secrets are created by the cluster's operator, never committed"


def test_custom_resources_match_their_crds(docs: tuple[dict[str, Any], ...]) -> None:
    custom = [d for d in docs if _is_custom(d)]
    assert {d["kind"] for d in custom} >= {"Kafka", "KafkaNodePool", "KafkaTopic", "RayCluster"}
    errors = {f"{d['kind']}/{d['metadata']['name']}": _crd_errors(d) for d in custom}
    assert not {k: v for k, v in errors.items() if v}, json.dumps(errors, indent=1)


def test_strict_crd_schema_rejects_a_typo() -> None:
    """The schema translation must not be vacuous: a misspelt field and a wrong type are errors."""
    ray = copy.deepcopy(_ray(_render("base")))
    ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    ray["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    errors = _crd_errors(ray)
    assert any("imagePullPolicyy" in e for e in errors), errors
    assert any("replicas" in e for e in errors), errors
    topic = copy.deepcopy(_all(_render("base"), "KafkaTopic")[0])
    topic["spec"]["config"]["any.broker.setting"] = 1  # config is x-kubernetes-preserve-unknown-fields
    assert not _crd_errors(topic)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_standard_kinds_validate(docs: tuple[dict[str, Any], ...], version: str) -> None:
    errors = {f"{d['kind']}/{d['metadata']['name']}": _k8s_errors(d, version) for d in docs if not _is_custom(d)}
    assert not {k: v for k, v in errors.items() if v}, json.dumps(errors, indent=1)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_ray_pod_templates_validate_as_pod_templates(docs: tuple[dict[str, Any], ...], version: str) -> None:
    errors = {}
    for name, template in _pod_templates(docs).items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        errors[name] = _k8s_errors(wrapped, version)
    assert not {k: v for k, v in errors.items() if v}, json.dumps(errors, indent=1)


# ------------------------------------------------------------------------------- config cross-checks
def test_config_json_is_a_valid_root_config(docs: tuple[dict[str, Any], ...]) -> None:
    cfg = _config(docs)  # Config.from_dict rejects unknown or renamed keys
    assert cfg.kafka.create_topics is False, "Strimzi owns the topics (KafkaTopic resources)"
    assert cfg.cluster.ray_address == "auto"
    assert cfg.gateway.host == "0.0.0.0"
    assert cfg.gateway.tls_cert and cfg.gateway.tls_key and cfg.gateway.tokens_file, (
        "a non-loopback gateway needs TLS and tokens"
    )
    assert not cfg.gateway.insecure_local


def test_base_config_file_is_loadable_as_is() -> None:
    Config.from_file(K8S / "base" / "config.json")


def test_topics_match_config(docs: tuple[dict[str, Any], ...]) -> None:
    cfg = _config(docs)
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in _all(docs, "KafkaTopic")}
    assert set(topics) == {cfg.kafka.topic, cfg.kafka.dlq}
    for name, t in topics.items():
        assert t["spec"]["partitions"] == cfg.cluster.partitions, (
            f"{name} has {t['spec']['partitions']} partitions, cluster.partitions is {cfg.cluster.partitions}: "
            "Kafka partitions and owners are 1:1"
        )
        assert int(t["spec"]["config"]["max.message.bytes"]) == 16 * 1024 * 1024, name


def test_kafka_resources_form_one_cluster(docs: tuple[dict[str, Any], ...]) -> None:
    cfg = _config(docs)
    kafka = _one(docs, "Kafka")
    name = kafka["metadata"]["name"]
    pools = _all(docs, "KafkaNodePool")
    for r in pools + _all(docs, "KafkaTopic"):
        assert r["metadata"].get("labels", {}).get("strimzi.io/cluster") == name, r["metadata"]["name"]
    roles = {role for p in pools for role in p["spec"]["roles"]}
    assert roles == {"controller", "broker"}, f"KRaft needs controllers and brokers, pools have {roles}"
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    for t in _all(docs, "KafkaTopic"):
        assert t["spec"]["replicas"] <= brokers, t["metadata"]["name"]
        assert int(t["spec"]["config"].get("min.insync.replicas", 1)) <= t["spec"]["replicas"], t["metadata"]["name"]
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "default.replication.factor",
    ):
        assert int(kafka["spec"]["kafka"]["config"][key]) <= brokers, key
    assert "topicOperator" in kafka["spec"].get("entityOperator", {}), "KafkaTopics need the topic operator"

    # kafka.bootstrap is the Strimzi bootstrap Service of this cluster, on a listener without TLS
    # (clustergnn's Kafka client has no TLS/SASL settings).
    listeners = {int(li["port"]): li for li in kafka["spec"]["kafka"]["listeners"]}
    host, port = cfg.kafka.bootstrap.rsplit(":", 1)
    assert host == f"{name}-kafka-bootstrap.{kafka['metadata']['namespace']}.svc"
    assert (
        int(port) in listeners and listeners[int(port)]["tls"] is False and "authentication" not in listeners[int(port)]
    )


# ----------------------------------------------------------------------------- the Ray cluster itself
def test_driver_runs_in_the_head_pod(docs: tuple[dict[str, Any], ...]) -> None:
    ray = _ray(docs)
    assert ray["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    head_c = _head(docs)["spec"]["containers"][0]
    assert head_c is _gateway_container(docs), "the Ray container (index 0) of the head runs the driver"
    script = " ".join(head_c["command"] + head_c["args"])
    assert "${KUBERAY_GEN_RAY_START_CMD/--block/}" in script, (
        "the head must start Ray without blocking, then the driver"
    )
    mounts = {m["mountPath"]: m for m in head_c["volumeMounts"]}
    m = re.search(r"exec clustergnn serve --config (\S+) --ray-address auto\b", script)
    assert m, script
    assert m.group(1) in mounts and mounts[m.group(1)].get("subPath") == "config.json"
    # The overwrite annotation applies to every pod: workers must start Ray themselves.
    for g in _workers(docs):
        c = g["template"]["spec"]["containers"][0]
        assert "$KUBERAY_GEN_RAY_START_CMD" in " ".join(c.get("command", []) + c.get("args", [])), g["groupName"]
        assert "clustergnn serve" not in " ".join(c.get("args", []))
    assert ray["spec"]["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "owner actors belong on workers"


def test_gateway_ports_and_probes(docs: tuple[dict[str, Any], ...]) -> None:
    """Readiness asks the health of the service that follows the owners (NOT_SERVING during a recovery:
    the pod leaves the Service, nothing restarts); startup and liveness ask one that stays SERVING
    while the gateway runs, so a recovery never restarts the head."""
    cfg = _config(docs)
    c = _gateway_container(docs)
    ports = {p["containerPort"]: p for p in c["ports"]}
    assert {50051, 9464} <= set(ports)
    assert cfg.gateway.port == 50051 and cfg.gateway.metrics_port == 9464
    tls_mount = next(
        m["mountPath"] for m in c["volumeMounts"] if Path(cfg.gateway.tls_cert).parent == Path(m["mountPath"])
    )
    service_name = f"{_one(docs, 'Service', 'clustergnn-gateway')['metadata']['name']}.{NAMESPACE}.svc"
    wanted = {
        "startupProbe": HEALTH_LIVE_SERVICE,
        "readinessProbe": HEALTH_READY_SERVICE,
        "livenessProbe": HEALTH_LIVE_SERVICE,
    }
    for probe, service in wanted.items():
        cmd = c[probe]["exec"]["command"]
        assert cmd[0] == "clustergnn-healthcheck", probe
        args = _healthcheck_args(cmd)
        assert args.service == service, f"{probe} must ask the health of {service}, asks {args.service!r}"
        assert not args.any_status and not args.plaintext, probe
        assert args.address.rsplit(":", 1)[1] == str(cfg.gateway.port), probe
        assert cfg.gateway.tls_cert in args.root_cert, probe
        assert all(Path(r).parent == Path(tls_mount) for r in args.root_cert), probe
        assert args.server_name == service_name, f"{probe}: the probe verifies the Service's DNS name"
        assert c[probe]["timeoutSeconds"] > args.timeout_s, f"{probe}: the kubelet must outwait the check"
    # Readiness reacts within seconds; liveness tolerates minutes of a busy gateway.
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 15, ready
    assert live["periodSeconds"] * live["failureThreshold"] >= 60, live


def _healthcheck_args(cmd: list[str]) -> Any:
    """The probe's command line, parsed by healthcheck.py's own parser (unknown flags fail)."""
    sys.path.insert(0, str(K8S))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(K8S))
    return healthcheck.build_parser().parse_args(cmd[1:])


def test_health_services_are_the_gateways() -> None:
    """The service names the probes ask are the ones the gateway registers, with the roles the probes
    rely on (cluster-following for readiness, always SERVING for liveness)."""
    pytest.importorskip("grpc")
    from actors.gateway import server

    src = (ROOT / "actors" / "gateway" / "server.py").read_text()
    assert server.EMBEDDING_SERVICE == HEALTH_READY_SERVICE
    assert server.ADMIN_SERVICE == HEALTH_LIVE_SERVICE
    assert "cluster_services=(EMBEDDING_SERVICE,)" in src
    assert re.search(r"always_services=\([^)]*ADMIN_SERVICE", src)


def test_gateway_files_come_from_mounted_secrets(docs: tuple[dict[str, Any], ...]) -> None:
    cfg = _config(docs)
    head = _head(docs)
    c = _gateway_container(docs)
    volumes = {v["name"]: v for v in head["spec"]["volumes"]}
    for path in (cfg.gateway.tls_cert, cfg.gateway.tls_key, cfg.gateway.tokens_file):
        mount = [m for m in c["volumeMounts"] if Path(path).parent == Path(m["mountPath"])]
        assert len(mount) == 1, f"{path} is not under exactly one mount"
        assert "secret" in volumes[mount[0]["name"]], f"{path} must come from a Secret"
    keys = {Path(cfg.gateway.tls_cert).name, Path(cfg.gateway.tls_key).name}
    assert keys == {"tls.crt", "tls.key"}, "the keys of a kubernetes.io/tls Secret"


def test_referenced_configmaps_and_secrets_exist_or_are_documented(docs: tuple[dict[str, Any], ...]) -> None:
    configmaps, secrets = set(), set()
    for t in _pod_templates(docs).values():
        spec = t["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v:
                configmaps.add(v["configMap"]["name"])
            if "secret" in v:
                secrets.add(v["secret"]["secretName"])
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    configmaps.add(ref["configMapKeyRef"]["name"])
                if "secretKeyRef" in ref:
                    secrets.add(ref["secretKeyRef"]["name"])
            for e in c.get("envFrom", []):
                if "configMapRef" in e:
                    configmaps.add(e["configMapRef"]["name"])
                if "secretRef" in e:
                    secrets.add(e["secretRef"]["name"])
    for ray in _all(docs, "RayCluster"):
        ft = ray["spec"].get("gcsFaultToleranceOptions", {})
        for cred in ("redisPassword", "redisUsername"):
            ref = ft.get(cred, {}).get("valueFrom", {})
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
    rendered = {d["metadata"]["name"] for d in _all(docs, "ConfigMap")}
    assert configmaps <= rendered, f"ConfigMaps referenced but not rendered: {configmaps - rendered}"
    assert secrets <= set(OPERATOR_CREATED_SECRETS), f"undocumented Secrets: {secrets - set(OPERATOR_CREATED_SECRETS)}"
    readme = (K8S / "README.md").read_text()
    for name, command in OPERATOR_CREATED_SECRETS.items():
        assert command in readme, f"k8s/README.md must show how to create Secret {name}: `{command} ...`"


def test_service_selects_only_the_gateway_pod(docs: tuple[dict[str, Any], ...]) -> None:
    svc = _one(docs, "Service", "clustergnn-gateway")
    selected = _selected({"matchLabels": svc["spec"]["selector"]}, docs)
    assert selected == {"RayCluster/clustergnn/head"}, selected
    named = {p["name"]: p["containerPort"] for p in _gateway_container(docs)["ports"]}
    targets = {p["port"]: named.get(p["targetPort"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert targets == {50051: 50051, 9464: 9464}, targets


def test_pdb_covers_the_partition_owners(docs: tuple[dict[str, Any], ...]) -> None:
    pdb = _one(docs, "PodDisruptionBudget")
    selected = _selected(pdb["spec"]["selector"], docs)
    assert selected == {f"RayCluster/clustergnn/{g['groupName']}" for g in _workers(docs)}, selected


def test_network_policies(docs: tuple[dict[str, Any], ...]) -> None:
    policies = _all(docs, "NetworkPolicy")
    everything = set(_pod_templates(docs))
    ray_pods = set(_ray_pod_templates(docs))
    head = "RayCluster/clustergnn/head"
    for p in policies:
        assert _selected(p["spec"]["podSelector"], docs), f"{p['metadata']['name']} selects no pod"

    def allowed(port: int, pod: str, source: str) -> bool:
        """Some policy selecting `pod` admits `port` from `source` ('any', 'monitoring' or a template name)."""
        for p in policies:
            if pod not in _selected(p["spec"]["podSelector"], docs):
                continue
            for rule in p["spec"].get("ingress", []):
                ports = {int(x["port"]) for x in rule.get("ports", [])}
                if ports and port not in ports:
                    continue
                peers = rule.get("from")
                if not peers:
                    return True
                for peer in peers:
                    ns = peer.get("namespaceSelector", {}).get("matchLabels", {})
                    if (
                        source == "monitoring"
                        and ns == {"kubernetes.io/metadata.name": "monitoring"}
                        and "podSelector" not in peer
                    ):
                        return True
                    if source in everything and "namespaceSelector" not in peer and "podSelector" in peer:
                        if source in _selected(peer["podSelector"], docs):
                            return True
        return False

    assert allowed(50051, head, "any"), "gateway clients"
    assert allowed(9464, head, "monitoring"), "Prometheus scraping the gateway"
    for pod in ray_pods:
        for other in ray_pods:
            assert allowed(6379, pod, other) and allowed(40000, pod, other), f"Ray traffic {other} -> {pod}"
    assert not allowed(6379, head, "any") and not allowed(9464, head, "any"), "Ray and metrics stay internal"
    # The GCS's Redis: the head (where the GCS runs) only.
    for redis in everything - ray_pods:
        if redis.startswith("StatefulSet/clustergnn-redis"):
            assert allowed(6379, redis, head), "the GCS reaches its Redis"
            for other in (everything - {head}) | {"any", "monitoring"}:
                assert not allowed(6379, redis, other), f"{other} must not reach Redis"


def test_owner_actors_fit_the_workers(docs: tuple[dict[str, Any], ...]) -> None:
    """Ray counts each worker's CPU (and nvidia.com/gpu) limits; P owners must fit with room for the
    coordinator."""
    cfg = _config(docs)
    cpus = gpus = 0.0
    for g in _workers(docs):
        limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = str(limits["cpu"])
        cpus += g["replicas"] * (float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))
        gpus += g["replicas"] * float(limits.get("nvidia.com/gpu", 0))
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    p = cfg.cluster.partitions
    assert p * cfg.cluster.actor_num_cpus < cpus, (
        f"{p} owners x {cfg.cluster.actor_num_cpus} CPU do not fit {cpus} CPUs"
    )
    assert p * cfg.cluster.actor_num_gpus <= gpus, (
        f"{p} owners x {cfg.cluster.actor_num_gpus} GPU do not fit {gpus} GPUs"
    )
    if gpus:
        assert cfg.cluster.actor_num_gpus > 0, "GPU workers, but owners ask for no GPU"


def _worker_capacity(g: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) Ray counts for one worker of group ``g`` (its container limits)."""
    limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpu = str(limits["cpu"])
    return (float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)), float(limits.get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("target", SURVIVES_NODE_LOSS)
def test_owners_still_fit_after_losing_a_node(target: str) -> None:
    """A lost node takes one worker; its owners are re-created on the others (a spare adopts, or a new
    process starts).  With every spare on the survivors, P owners + cluster.spare_owners spares must fit
    the workers minus the largest one, in CPUs and GPUs, or a recovery waits for a replacement pod."""
    docs = _render(target)
    cfg = _config(docs)
    workers = [_worker_capacity(g) for g in _workers(docs) for _ in range(g["replicas"])]
    assert len(workers) >= 2, f"{target}: one worker cannot survive losing its node"
    actors = cfg.cluster.partitions + cfg.cluster.spare_owners
    for i, (name, need) in enumerate((("CPU", cfg.cluster.actor_num_cpus), ("GPU", cfg.cluster.actor_num_gpus))):
        left = sum(w[i] for w in workers) - max(w[i] for w in workers)
        assert actors * need <= left, (
            f"{target}: {cfg.cluster.partitions} owners + {cfg.cluster.spare_owners} spares x {need} {name} "
            f"do not fit the {left} {name}s left after losing the largest worker"
        )


def test_owners_land_on_workers_on_distinct_nodes(docs: tuple[dict[str, Any], ...]) -> None:
    """Owners never on the head (no Ray CPUs there, and every owner asks for some); each worker pod on
    its own Kubernetes node (required anti-affinity against its own group); a lost node's pods are
    replaced after seconds, not Kubernetes' default 5 minutes."""
    cfg = _config(docs)
    ray = _ray(docs)
    assert ray["spec"]["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    assert cfg.cluster.actor_num_cpus > 0, "a 0-CPU owner could be placed on the head, which has no CPUs for owners"
    assert "num-gpus" not in ray["spec"]["headGroupSpec"]["rayStartParams"] or (
        ray["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    )
    for g in _workers(docs):
        t = g["template"]
        terms = t["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert any(
            term["topologyKey"] == "kubernetes.io/hostname"
            and _matches(term["labelSelector"]["matchLabels"], t["metadata"]["labels"])
            and set(term["labelSelector"]) == {"matchLabels"}
            for term in terms
        ), f"{g['groupName']}: workers of one group must be on distinct nodes"
    for name, t in _ray_pod_templates(docs).items():
        tolerations = {x["key"]: x for x in t["spec"].get("tolerations", []) if x.get("effect") == "NoExecute"}
        for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"):
            assert key in tolerations and tolerations[key]["tolerationSeconds"] <= 60, f"{name}: {key}"
    # The head prefers a node without workers (a node loss then costs the head or some owners).
    head_terms = _head(docs)["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    worker_labels = [g["template"]["metadata"]["labels"] for g in _workers(docs)]
    assert any(
        all(_matches(t["podAffinityTerm"]["labelSelector"]["matchLabels"], w) for w in worker_labels)
        for t in head_terms
    )


def test_ray_node_health_checks_are_set_on_the_head(docs: tuple[dict[str, Any], ...]) -> None:
    """The GCS (on the head) declares a silent worker node dead after ``failure_threshold`` failed checks
    ``period_ms`` apart, each failing at once or after ``timeout_ms``: the documented bound holds."""
    env = _env(_head(docs)["spec"]["containers"][0])
    period = int(env["RAY_health_check_period_ms"]["value"])
    timeout = int(env["RAY_health_check_timeout_ms"]["value"])
    threshold = int(env["RAY_health_check_failure_threshold"]["value"])
    assert threshold >= 3, "a single slow answer must not kill a node"
    assert threshold * period <= 10_000, "a killed raylet is noticed within 10 s"
    assert threshold * timeout + (threshold - 1) * period <= 20_000, "a cut link is noticed within 20 s"
    readme = (K8S / "README.md").read_text()
    for name in ("RAY_health_check_period_ms", "RAY_health_check_timeout_ms", "RAY_health_check_failure_threshold"):
        assert f"{name}={env[name]['value']}" in readme.replace("`", ""), f"k8s/README.md must state {name}"


@pytest.mark.parametrize("target", TARGETS)
def test_snapshot_storage_is_reachable_from_every_ray_pod(target: str) -> None:
    """snapshot.uri is written by every owner (workers) and committed by the coordinator (head): an S3
    URI with credentials from one Secret on every Ray pod, or a directory on ONE ReadWriteMany claim
    mounted at that path on every Ray pod.  Off (null) only where the log itself is ephemeral (dev)."""
    docs = _render(target)
    uri = _config(docs).snapshot.uri
    pods = _ray_pod_templates(docs)
    s3_secrets = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for t in pods.values()
        for c in t["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"].startswith("AWS_") and "secretKeyRef" in e.get("valueFrom", {})
    }
    if uri is None:
        assert target == "overlays/dev", f"{target}: snapshots off means replaying the whole log on every recovery"
        assert not s3_secrets, f"{target}: S3 credentials without snapshots ({s3_secrets}) need a Secret for nothing"
        return
    if "://" in uri:
        assert uri.startswith("s3://"), f"only s3:// and shared directories are wired up here, not {uri}"
        pafs = pytest.importorskip("pyarrow.fs")
        query = dict(q.split("=", 1) for q in uri.split("?", 1)[1].split("&")) if "?" in uri else {}
        assert "region" in query or "endpoint_override" in query, "without either, pyarrow asks AWS for the region"
        fs, path = pafs.FileSystem.from_uri(uri)  # offline; unknown query keys are errors
        assert fs.type_name == "s3" and "/" in path, (uri, path)
        assert len(s3_secrets) == 1, s3_secrets
        for name, t in pods.items():
            env = _env(t["spec"]["containers"][0])
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ref = env.get(key, {}).get("valueFrom", {}).get("secretKeyRef", {})
                assert ref.get("key") == key and not ref.get("optional"), f"{name}: {key} from the Secret"
        return
    assert uri.startswith("/"), f"a snapshot directory must be absolute: {uri}"
    assert not s3_secrets, s3_secrets
    claims = {d["metadata"]["name"]: d for d in _all(docs, "PersistentVolumeClaim")}
    used = set()
    for name, t in pods.items():
        volumes = {v["name"]: v for v in t["spec"].get("volumes", [])}
        mounts = [
            m
            for m in t["spec"]["containers"][0].get("volumeMounts", [])
            if Path(uri) == Path(m["mountPath"]) or Path(m["mountPath"]) in Path(uri).parents
        ]
        assert len(mounts) == 1 and not mounts[0].get("readOnly"), f"{name}: {uri} must be on one writable mount"
        vol = volumes[mounts[0]["name"]]
        assert "persistentVolumeClaim" in vol, f"{name}: {uri} is on {vol}, not a shared claim"
        used.add(vol["persistentVolumeClaim"]["claimName"])
    assert len(used) == 1, f"every Ray pod must mount the same claim, got {used}"
    claim = claims[next(iter(used))]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], claim["spec"]["accessModes"]


def test_gcs_fault_tolerance(docs: tuple[dict[str, Any], ...]) -> None:
    """KubeRay's gcsFaultToleranceOptions, pointed at the Redis rendered beside it, with the rules
    KubeRay's validation enforces (no ft-enabled annotation alongside; no redis-password in
    rayStartParams nor REDIS_PASSWORD/RAY_REDIS_ADDRESS env on the head), and a head command that
    expands the $REDIS_PASSWORD KubeRay writes into the generated ray start."""
    ray = _ray(docs)
    ft = ray["spec"]["gcsFaultToleranceOptions"]
    assert "ray.io/ft-enabled" not in ray["metadata"].get("annotations", {})
    assert "ray.io/external-storage-namespace" not in ray["metadata"].get("annotations", {})
    assert ft.get("backend", "redis") == "redis", "the RocksDB backend is alpha (KubeRay master only)"
    head = _head(docs)["spec"]["containers"][0]
    assert "redis-password" not in ray["spec"]["headGroupSpec"]["rayStartParams"]
    assert not {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS"} & set(_env(head))
    script = " ".join(head["command"] + head["args"])
    assert 'eval "${KUBERAY_GEN_RAY_START_CMD/--block/}"' in script, "$REDIS_PASSWORD must be expanded"

    host, port = ft["redisAddress"].rsplit(":", 1)
    svc_name, ns, svc = host.split(".")
    assert (ns, svc) == (NAMESPACE, "svc"), host
    redis_svc = _one(docs, "Service", svc_name)
    assert int(port) in {p["port"] for p in redis_svc["spec"]["ports"]}
    selected = _selected({"matchLabels": redis_svc["spec"]["selector"]}, docs)
    assert selected == {f"StatefulSet/{svc_name}"}, selected
    sts = _one(docs, "StatefulSet", svc_name)
    assert sts["spec"]["replicas"] == 1, "KubeRay supports a standalone Redis"
    redis = sts["spec"]["template"]["spec"]["containers"][0]
    ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert _env(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref, "Redis and the GCS share one password"
    assert "--requirepass" in " ".join(redis["args"]) and "--appendonly yes" in " ".join(redis["args"])
    data = {m["name"]: m["mountPath"] for m in redis["volumeMounts"]}
    assert data.get("data") == "/data" and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_serve_command_uses_real_flags(docs: tuple[dict[str, Any], ...]) -> None:
    """The driver's command line parses with clustergnn's own CLI (no invented flags)."""
    from actors.cli import build_parser

    script = " ".join(_gateway_container(docs)["args"])
    argv = script[script.index("exec clustergnn serve") + len("exec clustergnn ") :].split()
    args = build_parser().parse_args(argv)
    assert args.command == "serve" and args.ray_address == "auto"


def test_versions_agree_with_pyproject() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    dockerfile = (K8S / "Dockerfile").read_text()
    pins = dict(re.findall(r'"(ray|torch)==([^"]+)"', pyproject))
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert f'"ray[default]=={pins["ray"]}"' in dockerfile
    assert f'"torch=={pins["torch"]}"' in dockerfile
    assert "pip install ." in dockerfile
    assert "COPY --chmod=0755 k8s/healthcheck.py /usr/local/bin/clustergnn-healthcheck" in dockerfile
    for target in TARGETS:
        try:
            ray = _ray(_render(target))
        except pytest.skip.Exception:
            continue
        assert ray["spec"]["rayVersion"] == pins["ray"], target
        images = {c["image"] for t in _ray_pod_templates(_render(target)).values() for c in t["spec"]["containers"]}
        assert len(images) == 1 and next(iter(images)).startswith("ghcr.io/clustergnn/clustergnn:0.1.0"), images


# ----------------------------------------------------------------------------------- the exec probe
@pytest.mark.integration
def test_healthcheck_probe(tmp_path: Path) -> None:
    """k8s/healthcheck.py against a real TLS gRPC health server on 127.0.0.1."""
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cert, key = _self_signed(tmp_path, "clustergnn-gateway.clustergnn.svc")
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    sys.path.insert(0, str(K8S))
    try:
        import healthcheck

        args = [
            "--address",
            f"127.0.0.1:{port}",
            "--root-cert",
            str(tmp_path / "ca.crt"),
            "--root-cert",
            str(cert),
            "--server-name",
            "clustergnn-gateway.clustergnn.svc",
            "--timeout-s",
            "5",
        ]
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.main(args) == healthcheck.EXIT_SERVING
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.main(args) == healthcheck.EXIT_NOT_SERVING
        assert healthcheck.main([*args, "--any-status"]) == healthcheck.EXIT_SERVING
        wrong_name = [*args[:-4], "--server-name", "elsewhere.example", "--timeout-s", "2"]
        assert healthcheck.main(wrong_name) == healthcheck.EXIT_UNREACHABLE
    finally:
        sys.path.remove(str(K8S))
        server.stop(None)
    assert healthcheck.main([*args[:2], "--plaintext", "--timeout-s", "1"]) == healthcheck.EXIT_UNREACHABLE


def _self_signed(directory: Path, dns_name: str) -> tuple[Path, Path]:
    """What `openssl req -x509 -addext subjectAltName=DNS:<name>` gives: a self-signed EC certificate."""
    pytest.importorskip("cryptography")
    from actors.commands import self_signed

    cert, key = self_signed([dns_name], days=1)
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return cert_path, key_path


@pytest.mark.integration
def test_probes_follow_the_gateway_health(tmp_path: Path) -> None:
    """The head's probe commands, as written in the manifest, against a real gateway (TLS, fake backend)
    on 127.0.0.1: with an owner down (a recovery) readiness fails and startup/liveness still pass."""
    pytest.importorskip("grpc")
    from actors.gateway.server import GatewayServer
    from clustergnn.config import GatewayConfig
    from tests.gateway.fakes import FakeBackend

    c = _gateway_container(_render("base"))
    cert, key = _self_signed(tmp_path, "clustergnn-gateway.clustergnn.svc")
    backend = FakeBackend()
    cfg = GatewayConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        tls_cert=str(cert),
        tls_key=str(key),
        tokens=("probe-test-token",),
        health_poll_interval_s=0.05,
    )
    gw = GatewayServer(backend, cfg).start()
    sys.path.insert(0, str(K8S))
    try:
        import healthcheck

        def run(probe: str) -> int:
            cmd = [a.replace("/etc/clustergnn/tls/", f"{tmp_path}/") for a in c[probe]["exec"]["command"][1:]]
            return healthcheck.main([*cmd, "--address", f"127.0.0.1:{gw.port}", "--timeout-s", "5"])

        def settle(want_ready: int) -> None:
            deadline = time.monotonic() + 10
            while run("readinessProbe") != want_ready and time.monotonic() < deadline:
                time.sleep(0.05)

        settle(healthcheck.EXIT_SERVING)
        assert run("readinessProbe") == healthcheck.EXIT_SERVING
        backend.set_alive(0, False)  # an owner lost: the cluster recovers, health NOT_SERVING
        settle(healthcheck.EXIT_NOT_SERVING)
        assert run("readinessProbe") == healthcheck.EXIT_NOT_SERVING
        assert run("livenessProbe") == healthcheck.EXIT_SERVING, "a recovery must not restart the head"
        assert run("startupProbe") == healthcheck.EXIT_SERVING
        backend.set_alive(0, True)  # recovered
        settle(healthcheck.EXIT_SERVING)
        assert run("readinessProbe") == healthcheck.EXIT_SERVING
    finally:
        sys.path.remove(str(K8S))
        gw.stop(grace_s=0.2)

"""deploy/: the CRDs are what the protos make (scripts/gencrds), the manifests render with kustomize
(``kubectl kustomize``) and every object validates offline against the Kubernetes schemas
(``kubernetes-validate``, strict: unknown fields are errors); custom resources against our CRDs'
schemas and aeraki-ctl's own validator. Nothing here talks to a cluster."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from aeraki_ctl import crds
from aeraki_ctl.validation import validate_object

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31.0"
KUBECTL = shutil.which("kubectl")


def rendered(folder: Path) -> list[dict[str, Any]]:
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def file_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((str(path.relative_to(ROOT)), d) for d in yaml.safe_load_all(path.read_text()) if d)
    return out


def crd_schema(kind: str) -> dict[str, Any]:
    """Our CRD's openAPIV3Schema as JSON Schema (the Kubernetes extensions dropped, nullable kept)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: strip(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
            if node.get("nullable") and "type" in out:
                out["type"] = [out["type"], "null"]
            return out
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return strip(schema)  # type: ignore[no-any-return]


def validate(obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    if kind in crds.KINDS:
        jsonschema.validate(obj, crd_schema(kind))
        verdict = validate_object(obj)
        assert verdict.allowed and not verdict.warnings, [str(p) for p in verdict.problems]
    elif obj["apiVersion"].startswith("networking.istio.io/"):
        verdict = validate_object(obj)
        assert verdict.allowed, [str(p) for p in verdict.problems]
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# -- the CRDs -------------------------------------------------------------------------------------


def test_crds_are_generated_from_the_protos_and_current() -> None:
    for name, text in crds.files().items():
        path = DEPLOY / "crds" / name
        assert path.exists() and path.read_text() == text, f"{path} is stale: run scripts/gencrds"


def _structural(node: dict[str, Any], path: str) -> None:
    """The rules of a structural schema that matter here: a type everywhere (or unknown fields
    preserved), properties and additionalProperties never together, items of arrays typed."""
    assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
    assert not ("properties" in node and "additionalProperties" in node), path
    for k, v in node.get("properties", {}).items():
        _structural(v, f"{path}.{k}")
    if "additionalProperties" in node:
        _structural(node["additionalProperties"], f"{path}.*")
    if node.get("type") == "array":
        _structural(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", sorted(crds.KINDS))
def test_crds_are_structural_with_status_and_printer_columns(kind: str) -> None:
    crd = crds.crd(kind)
    (version,) = crd["spec"]["versions"]
    _structural(version["schema"]["openAPIV3Schema"], kind)
    assert version["subresources"] == {"status": {}} and version["additionalPrinterColumns"]
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


def test_the_crd_schema_refuses_what_the_typed_reader_refuses() -> None:
    good = yaml.safe_load((DEPLOY / "example/metarouter.yaml").read_text().split("---")[1])
    jsonschema.validate(good, crd_schema("MetaRouter"))
    bad = copy.deepcopy(good)
    bad["spec"]["routes"][0]["route"][0]["weight"] = "twenty"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema("MetaRouter"))
    assert not validate_object(bad).allowed


# -- the manifests --------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["deploy", "deploy/example"])
def test_kustomize_renders_and_every_object_validates(folder: str) -> None:
    objects = rendered(ROOT / folder)
    assert objects
    for obj in objects:
        validate(obj)


def test_every_file_validates_alone() -> None:
    objects = file_objects()
    assert len(objects) >= 15
    for where, obj in objects:
        try:
            validate(obj)
        except Exception as exc:
            raise AssertionError(f"{where}: {obj['kind']} {obj['metadata'].get('name')}: {exc}") from exc


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = next(o for _, o in file_objects() if o["kind"] == "Deployment" and o["metadata"]["name"] == "aeraki-ctl")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [o for _, o in file_objects() if o["kind"] == kind]


def test_rbac_is_least_privilege() -> None:
    (role,) = by_kind("ClusterRole")
    rules = {(g, r): sorted(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    watch = ["get", "list", "watch"]
    assert rules == {
        ("metaprotocol.aeraki.io", "metarouters"): watch,
        ("metaprotocol.aeraki.io", "applicationprotocols"): watch,
        ("metaprotocol.aeraki.io", "metarouters/status"): ["patch", "update"],
        ("networking.istio.io", "serviceentries"): watch,
        ("networking.istio.io", "destinationrules"): watch,
        ("networking.istio.io", "sidecars"): watch,
        ("security.istio.io", "authorizationpolicies"): watch,
        ("security.istio.io", "peerauthentications"): watch,
        ("dubbo.aeraki.io", "dubboauthorizationpolicies"): watch,
        ("", "services"): watch,
        ("", "pods"): watch,
        ("discovery.k8s.io", "endpointslices"): watch,
    }
    (lease,) = by_kind("Role")
    assert lease["metadata"]["namespace"] == "aeraki"
    assert lease["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]


def test_deployment_service_and_webhook_agree() -> None:
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "aeraki-ctl"]
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc-xds": 15010, "https-webhook": 9443, "http-admin": 15014}
    deployment = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "aeraki-ctl")
    assert deployment["spec"]["replicas"] == 2
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-admin"}
    assert c["resources"]["requests"]
    assert {"--admin=0.0.0.0:15014", "--xds-address=0.0.0.0:15010", "--webhook-port=9443"} <= set(c["args"])
    (webhook,) = by_kind("ValidatingWebhookConfiguration")[0]["webhooks"]
    assert webhook["clientConfig"]["service"] == {"name": "aeraki-ctl", "namespace": "aeraki", "port": 9443, "path": "/validate"}
    assert webhook["rules"][0]["resources"] == ["metarouters"] and webhook["admissionReviewVersions"] == ["v1"]


def test_the_example_sidecar_is_configured_over_xds_with_a_downward_api_node_id() -> None:
    consumer = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "dubbo-sample-consumer")
    sidecar = next(c for c in consumer["spec"]["template"]["spec"]["containers"] if c["name"] == "metaprotocol-proxy")
    assert "--xds=aeraki-ctl.aeraki.svc:15010" in sidecar["args"] and "--node-id=$(POD_NAME).$(POD_NAMESPACE)" in sidecar["args"]
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in sidecar["env"]} == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}

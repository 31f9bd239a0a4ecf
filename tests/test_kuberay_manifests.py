"""deploy/kuberay: every manifest parses and validates against its schema (Kubernetes' own
through kubernetes-validate; the RayService against KubeRay's CRD schema, its pod templates as
`v1/PodTemplate`), the RayService's serveConfigV2 is the checked-in Serve config, every
`import_path` imports as a Ray application builder, and the API pods read the same file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERAY = ROOT / "deploy" / "kuberay"
KUBERNETES_VERSION = "1.33"  # the oldest release the manifests target


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


def manifests() -> list[tuple[str, dict]]:
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    names = kustomization["resources"] + ["secrets.example.yaml"]
    return [(name, doc) for name in names for doc in documents(name)]


def by_kind(kind: str, name: str | None = None) -> dict:
    [doc] = [d for _, d in manifests() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    return doc


def test_the_kustomization_lists_every_manifest_and_the_serve_config():
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"]) | {"secrets.example.yaml", "kustomization.yaml",
                                                 "serve_config.yaml"}
    assert {p.name for p in KUBERAY.glob("*.yaml")} == listed
    [generator] = kustomization["configMapGenerator"]
    assert generator == {"name": "retouch-serve-config", "files": ["serve_config.yaml"]}


@pytest.mark.parametrize("name,doc", [m for m in manifests() if m[1]["kind"] != "RayService"],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_kubernetes_manifests_validate_strictly(name, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_fails_validation():
    deployment = json.loads(json.dumps(by_kind("Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def rayservice_schema() -> dict:
    return json.loads((KUBERAY / "schema" / "rayservice-v1.json").read_text())


def pod_templates(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["workerGroupSpecs"]]


def test_the_rayservice_validates_against_kuberays_crd_schema():
    rayservice = by_kind("RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    jsonschema.Draft202012Validator(rayservice_schema()).validate(rayservice)
    for template in pod_templates(rayservice):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": "template"}, "template": template},
                                     KUBERNETES_VERSION, strict=True)
    broken = json.loads(json.dumps(rayservice))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.Draft202012Validator(rayservice_schema()).validate(broken)


def test_the_serve_config_inside_is_the_checked_in_one_and_valid():
    from retouch.serving.serve_config import application_names, load_serve_config

    rayservice = by_kind("RayService")
    inside = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert inside == yaml.safe_load((KUBERAY / "serve_config.yaml").read_text())
    config = load_serve_config(KUBERAY / "serve_config.yaml")  # Ray's schema + retouch's checks
    assert application_names(config) == {"diffusion": "retouch-diffusion",
                                         "upscaler": "retouch-upscaler"}


def test_every_import_path_imports_as_an_application_builder():
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr

    inside = yaml.safe_load(by_kind("RayService")["spec"]["serveConfigV2"])
    for app in inside["applications"]:
        built = call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]),
                                                             app["args"])
        assert isinstance(built, Application)
        assert [d["name"] for d in app["deployments"]] == [built._bound_deployment.name]


def test_the_api_pods_join_the_rayservice_and_read_the_same_serve_config():
    config = by_kind("ConfigMap", "retouch-config")["data"]
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "serve-config"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "serve-config"]
    assert volume["configMap"]["name"] == "retouch-serve-config"
    assert config["RETOUCH_SERVE_CONFIG"] == f"{mount['mountPath']}/serve_config.yaml"
    assert config["RETOUCH_DEPLOY_SERVE_APPS"] == "false"
    assert config["RETOUCH_MIGRATE_ON_START"] == "false"
    assert config["RETOUCH_STORAGE"] == "s3" and config["RETOUCH_EXECUTOR"] == "ray"
    # The head Service KubeRay makes for a RayService is `<name>-head-svc`.
    head = f"{by_kind('RayService')['metadata']['name']}-head-svc:6379"
    assert f"ray start --address={head}" in container["args"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    port = int(config["RETOUCH_PORT"])
    assert container["ports"][0]["containerPort"] == port != 8000  # 8000: Serve's proxy
    token = by_kind("RayService")["spec"]["rayClusterConfig"]["authOptions"]["secretName"]
    [env] = [e for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": token, "key": "auth_token"}

    from retouch.serving.settings import Settings

    settings = Settings(**{k.removeprefix("RETOUCH_").lower(): v for k, v in config.items()})
    assert settings.storage_account_prefixes and not settings.deploy_serve_apps


def test_the_ray_version_is_the_images():
    pinned = re.search(r'"ray\[serve\]==([\d.]+)"', (ROOT / "Dockerfile.cuda").read_text())
    assert pinned is not None
    assert by_kind("RayService")["spec"]["rayClusterConfig"]["rayVersion"] == pinned.group(1)

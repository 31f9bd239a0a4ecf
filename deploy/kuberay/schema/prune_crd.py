"""Turn KubeRay's RayService CRD into the JSON schema tests/test_kuberay_manifests.py uses.

    python deploy/kuberay/schema/prune_crd.py ray.io_rayservices.yaml > rayservice-v1.json

Input: `ray-operator/config/crd/bases/ray.io_rayservices.yaml` of the KubeRay release the
manifests target (rayservice-v1.json: KubeRay v1.7.0; the manifests need v1.6 or newer, for
`authOptions.secretName`). The CRD's `openAPIV3Schema` for `v1` is kept, except that every embedded pod
template (a `PodTemplateSpec`, most of the CRD's 1 MB) becomes an opaque object: the test
validates those with kubernetes-validate as `v1/PodTemplate`. Descriptions are dropped, and
objects with listed properties refuse unknown ones (`additionalProperties: false`), as the API
server's pruning would silently drop them.
"""

from __future__ import annotations

import json
import sys

import yaml

POD_TEMPLATE = {"type": "object", "x-retouch-validated-as": "v1/PodTemplate"}


def is_pod_template(schema: dict) -> bool:
    props = schema.get("properties", {})
    return set(props) == {"metadata", "spec"} and "containers" in props["spec"].get(
        "properties", {})


def prune(schema):
    if isinstance(schema, list):
        return [prune(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if is_pod_template(schema):
        return dict(POD_TEMPLATE)
    out = {k: prune(v) for k, v in schema.items() if k != "description"}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def main(path: str) -> None:
    crd = yaml.safe_load(open(path))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = prune(version["schema"]["openAPIV3Schema"])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"{crd['spec']['names']['kind']} {crd['spec']['group']}/v1"
    json.dump(schema, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])

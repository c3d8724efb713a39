"""Renders a kustomization the way `kubectl apply -k` does, for the subset deploy/kubernetes uses.

No kustomize binary on the CI machines: this implements resources, namespace, images,
configMapGenerator and secretGenerator (type Opaque, values base64 as kustomize writes them; options labels,
annotations, disableNameSuffixHash), and refuses any other key so that it can never silently render less
than kustomize.
The generated names get a content hash suffix like kustomize's (not the same digits; the test compares
with `kubectl kustomize` where that exists, ignoring the suffix).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "configMapGenerator", "secretGenerator"}
GENERATOR_KEYS = {"name", "files", "literals", "options"}
GENERATOR_OPTIONS = {"labels", "annotations", "disableNameSuffixHash"}
# Kinds that have no namespace (of those a kustomization like ours may hold).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(Exception):
    pass


def load_documents(path: Path) -> list[Obj]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: every document must be an object with apiVersion and kind")
    return docs


def render(folder: Path) -> list[Obj]:
    """Every object of the kustomization in `folder`, as `kubectl kustomize folder` would emit them."""
    path = folder / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{path}: this renderer does not implement {sorted(unknown)}")
    objects: list[Obj] = []
    for resource in spec.get("resources", []):
        target = folder / resource
        objects.extend(render(target) if target.is_dir() else load_documents(target))
    renames: dict[str, dict[str, str]] = {"ConfigMap": {}, "Secret": {}}
    for generator in spec.get("configMapGenerator", []):
        config_map = _generate(folder, generator, "ConfigMap")
        renames["ConfigMap"][generator["name"]] = config_map["metadata"]["name"]
        objects.append(config_map)
    for generator in spec.get("secretGenerator", []):
        secret = _generate(folder, generator, "Secret")
        renames["Secret"][generator["name"]] = secret["metadata"]["name"]
        objects.append(secret)
    for obj in objects:
        if spec.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
        if obj["kind"] in WORKLOADS:
            pod = obj["spec"]["template"]["spec"]
            _rename_references(pod, renames)
            _set_images(pod, spec.get("images", []))
    return objects


def _generate(folder: Path, generator: Obj, kind: str) -> Obj:
    """A ConfigMap or Secret from files and literals; a missing file is an error, as in kustomize."""
    unknown = set(generator) - GENERATOR_KEYS
    if unknown:
        raise KustomizeError(f"{kind} generator {generator.get('name')}: not implemented: {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, source = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        file = (folder / source).resolve()
        if folder.resolve() not in file.parents:  # kustomize's load restrictor: nothing outside the folder
            raise KustomizeError(f"{entry}: {file} is not in or below {folder}")
        if not file.is_file():
            raise KustomizeError(f"{kind} generator {generator['name']}: {file} does not exist")
        data[key] = file.read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    options = generator.get("options", {})
    if unknown := set(options) - GENERATOR_OPTIONS:
        raise KustomizeError(f"{kind} generator {generator['name']}: options not implemented: {sorted(unknown)}")
    digest = hashlib.sha256(json.dumps([kind, data], sort_keys=True).encode()).hexdigest()[:10]
    name = generator["name"] if options.get("disableNameSuffixHash") else f"{generator['name']}-{digest}"
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
    for key in ("labels", "annotations"):
        if options.get(key):
            obj["metadata"][key] = dict(options[key])
    if kind == "Secret":
        obj["type"] = "Opaque"
        obj["data"] = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    else:
        obj["data"] = data
    return obj


def _rename_references(pod: Obj, renames: dict[str, dict[str, str]]) -> None:
    """Point every reference to a generated ConfigMap or Secret at its hashed name."""

    def rename(ref: Obj | None, kind: str, field: str = "name") -> None:
        if ref is not None and ref.get(field) in renames[kind]:
            ref[field] = renames[kind][ref[field]]

    for volume in pod.get("volumes", []):
        rename(volume.get("configMap"), "ConfigMap")
        rename(volume.get("secret"), "Secret", "secretName")
        for source in volume.get("projected", {}).get("sources", []):
            rename(source.get("configMap"), "ConfigMap")
            rename(source.get("secret"), "Secret")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for env in container.get("env", []):
            rename(env.get("valueFrom", {}).get("configMapKeyRef"), "ConfigMap")
            rename(env.get("valueFrom", {}).get("secretKeyRef"), "Secret")
        for env_from in container.get("envFrom", []):
            rename(env_from.get("configMapRef"), "ConfigMap")
            rename(env_from.get("secretRef"), "Secret")


def _set_images(pod: Obj, images: list[Obj]) -> None:
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def without_hash_suffixes(objects: list[Obj], generated: set[str]) -> list[Obj]:
    """A copy where every `<generated>-<hash>` name is just `<generated>`, to compare two renderings.

    Secret values are compared without line breaks: kustomize wraps its base64 at 70 columns, the API
    server (Go's decoder) skips them."""
    objects = [
        {**obj, "data": {k: "".join(v.split()) for k, v in obj["data"].items()}}
        if obj["kind"] == "Secret" and obj.get("data")
        else obj
        for obj in objects
    ]
    text = json.dumps(objects, sort_keys=True)
    for obj in objects:
        name = obj["metadata"]["name"]
        base = name.rsplit("-", 1)[0]
        if obj["kind"] in ("ConfigMap", "Secret") and base in generated:
            text = text.replace(json.dumps(name), json.dumps(base))
    return sorted(json.loads(text), key=lambda o: (o["kind"], o["metadata"]["name"]))

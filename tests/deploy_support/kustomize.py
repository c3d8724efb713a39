"""Renders a kustomization the way `kubectl apply -k` does, for the subset deploy/kubernetes uses.

No kustomize binary on the CI machines: this implements resources, namespace, images and
configMapGenerator, and refuses any other key so that it can never silently render less than kustomize.
The generated names get a content hash suffix like kustomize's (not the same digits; the test compares
with `kubectl kustomize` where that exists, ignoring the suffix).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

SUPPORTED_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "configMapGenerator"}
GENERATOR_KEYS = {"name", "files", "literals"}
# Kinds that have no namespace (of those a kustomization like ours may hold).
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
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
    renames: dict[str, str] = {}
    for generator in spec.get("configMapGenerator", []):
        config_map = _generate_config_map(folder, generator)
        renames[generator["name"]] = config_map["metadata"]["name"]
        objects.append(config_map)
    for obj in objects:
        if spec.get("namespace") and obj["kind"] not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
        if obj["kind"] in WORKLOADS:
            pod = obj["spec"]["template"]["spec"]
            _rename_config_maps(pod, renames)
            _set_images(pod, spec.get("images", []))
    return objects


def _generate_config_map(folder: Path, generator: Obj) -> Obj:
    unknown = set(generator) - GENERATOR_KEYS
    if unknown:
        raise KustomizeError(f"configMapGenerator {generator.get('name')}: not implemented: {sorted(unknown)}")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, source = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        file = (folder / source).resolve()
        if folder.resolve() not in file.parents:  # kustomize's load restrictor: nothing outside the folder
            raise KustomizeError(f"{entry}: {file} is not in or below {folder}")
        data[key] = file.read_text()
    for literal in generator.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{generator['name']}-{digest}"}, "data": data}


def _rename_config_maps(pod: Obj, renames: dict[str, str]) -> None:
    def rename(ref: Obj | None) -> None:
        if ref is not None and ref.get("name") in renames:
            ref["name"] = renames[ref["name"]]

    for volume in pod.get("volumes", []):
        rename(volume.get("configMap"))
        for source in volume.get("projected", {}).get("sources", []):
            rename(source.get("configMap"))
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for env in container.get("env", []):
            rename(env.get("valueFrom", {}).get("configMapKeyRef"))
        for env_from in container.get("envFrom", []):
            rename(env_from.get("configMapRef"))


def _set_images(pod: Obj, images: list[Obj]) -> None:
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"


def without_hash_suffixes(objects: list[Obj], generated: set[str]) -> list[Obj]:
    """A copy where every `<generated>-<hash>` name is just `<generated>`, to compare two renderings."""
    text = json.dumps(objects, sort_keys=True)
    for obj in objects:
        name = obj["metadata"]["name"]
        base = name.rsplit("-", 1)[0]
        if obj["kind"] == "ConfigMap" and base in generated:
            text = text.replace(json.dumps(name), json.dumps(base))
    return sorted(json.loads(text), key=lambda o: (o["kind"], o["metadata"]["name"]))

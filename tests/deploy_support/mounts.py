"""What a container sees at its mount points, laid out in a local folder.

A `ContainerView` is a folder standing for the container's root: each mount point in it is a symlink to
the local source (a compose bind mount or named volume, or a Kubernetes volume materialized from the
rendered ConfigMaps and Secrets). Paths written in the files (`/auth/distributor.nk`,
`--config /etc/nats/nats.conf`) are then translated to this folder, and a relative `include` in a NATS
configuration finds its neighbour exactly as in the container.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


class ContainerView:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.mounts: dict[str, Path] = {}  # container path -> local source

    def mount(self, target: str, source: Path) -> None:
        if not target.startswith("/"):
            raise AssertionError(f"mount point {target!r} is not absolute")
        link = self.root / target.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source.resolve())
        self.mounts[target.rstrip("/")] = source

    def local(self, path: str) -> str:
        """A container path below a mount point, as a local path; anything else unchanged."""
        for target in sorted(self.mounts, key=len, reverse=True):
            if path == target or path.startswith(target + "/"):
                return str(self.root / path.lstrip("/"))
        return path

    def localize_text(self, text: str) -> str:
        """Every mount path inside a string (a shell script) replaced by its local one."""
        for target in sorted(self.mounts, key=len, reverse=True):
            text = text.replace(target + "/", str(self.root / target.lstrip("/")) + "/")
        return text


# -- docker compose ----------------------------------------------------------------------------------


def compose_mounts(view: ContainerView, service: Obj, repo: Path, named_volumes: Path) -> None:
    """The service's `volumes` (short syntax): `./path` from the repository, a name from `named_volumes`."""
    for entry in service.get("volumes", []):
        source, target, *_ = str(entry).split(":")
        if source.startswith((".", "/")):
            local = (repo / source).resolve()
            if not local.exists():
                raise AssertionError(f"bind mount {source}: {local} does not exist")
        else:
            local = named_volumes / source
            local.mkdir(parents=True, exist_ok=True)
        view.mount(target, local)


def unescape_compose(value: str) -> str:
    """Compose reads `$$` as a literal `$` (a single `$` starts an interpolation)."""
    return value.replace("$$", "$")


# -- Kubernetes --------------------------------------------------------------------------------------


def pod_mounts(
    view: ContainerView,
    pod: Obj,
    container: Obj,
    objects: list[Obj],
    volumes_root: Path,
    claim_templates: list[Obj] | None = None,
) -> None:
    """Materialize the container's configMap, secret, projected and emptyDir volumes and mount them; a
    StatefulSet's volumeClaimTemplates are empty folders, as a new claim is."""
    by_name = {v["name"]: v for v in pod.get("volumes", [])}
    by_name |= {c["metadata"]["name"]: {"name": c["metadata"]["name"], "emptyDir": {}} for c in claim_templates or []}
    for mount in container.get("volumeMounts", []):
        volume = by_name.get(mount["name"])
        if volume is None:
            raise AssertionError(f"volumeMount {mount['name']}: no such volume in the pod")
        folder = volumes_root / mount["name"]
        if not folder.exists():
            _materialize(volume, objects, folder)
        source = folder / mount["subPath"] if mount.get("subPath") else folder
        if not source.exists():
            raise AssertionError(f"volumeMount {mount['name']}: subPath {mount.get('subPath')} is not in the volume")
        view.mount(mount["mountPath"], source)


def _materialize(volume: Obj, objects: list[Obj], folder: Path) -> None:
    folder.mkdir(parents=True)
    if "emptyDir" in volume:
        return
    if "configMap" in volume:
        _write_source(
            folder,
            _find(objects, "ConfigMap", volume["configMap"]["name"]),
            volume["configMap"],
            volume["configMap"].get("defaultMode", 0o644),
        )
    elif "secret" in volume:
        _write_source(
            folder,
            _find(objects, "Secret", volume["secret"]["secretName"]),
            volume["secret"],
            volume["secret"].get("defaultMode", 0o644),
        )
    elif "projected" in volume:
        mode = volume["projected"].get("defaultMode", 0o644)
        for source in volume["projected"]["sources"]:
            [(kind, ref)] = [(k, v) for k, v in source.items() if k in ("configMap", "secret")]
            _write_source(folder, _find(objects, "ConfigMap" if kind == "configMap" else "Secret", ref["name"]), ref, mode)
    else:
        raise AssertionError(f"volume {volume['name']}: this helper does not lay out {sorted(volume)}")


def _find(objects: list[Obj], kind: str, name: str) -> Obj:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"{kind} {name} is not among the rendered objects")


def _write_source(folder: Path, obj: Obj, ref: Obj, default_mode: int) -> None:
    """Keys of a ConfigMap or Secret as files: all of them, or only `items` (key -> path), as the kubelet does."""
    data = obj.get("data", {})
    if obj["kind"] == "Secret":
        data = {key: base64.b64decode(value).decode() for key, value in data.items()}
    items = ref.get("items") or [{"key": key, "path": key} for key in data]
    for item in items:
        if item["key"] not in data:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} has no key {item['key']!r}")
        path = folder / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[item["key"]])
        os.chmod(path, item.get("mode", default_mode))

"""VM specs and the YAML config that declares them.

Every bad input gets one error naming the file, the line and the field::

    project.yaml:4: vms.web.memory: '12 parsecs' is not a size (use e.g. 512M or 2G)

Sections other issues add (mounts, agents, backups) are accepted by name so
that one config file can grow; unknown top-level keys are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .sizes import format_size, parse_size

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
TOP_LEVEL = {"vms", "mounts", "agents", "backups", "defaults"}
VM_FIELDS = {"cpus", "memory", "disk", "image"}
KNOWN_IMAGES = {"debian-12"}
MIN_MEMORY = 128 * 1024**2
MIN_DISK = 2 * 1024**3  # the base image's file system; smaller would truncate it


@dataclass(frozen=True)
class VMSpec:
    """What a VM should be. Compared field by field to detect a mismatch."""

    name: str
    cpus: int = 1
    memory: int = 512 * 1024**2
    disk: int = 2 * 1024**3
    image: str = "debian-12"

    def resources(self) -> dict[str, Any]:
        """The fields a mismatch is reported on, in human form."""
        return {"cpus": self.cpus, "memory": format_size(self.memory), "disk": format_size(self.disk),
                "image": self.image}

    def differences(self, other: "VMSpec") -> list[str]:
        """``field: existing X, requested Y`` for each field that differs."""
        mine, theirs = self.resources(), other.resources()
        return [f"{k}: existing {mine[k]}, requested {theirs[k]}" for k in mine if mine[k] != theirs[k]]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cpus": self.cpus, "memory": self.memory, "disk": self.disk, "image": self.image}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VMSpec":
        return cls(**{k: d[k] for k in ("name", "cpus", "memory", "disk", "image") if k in d})


@dataclass
class Config:
    """A loaded config file: its path (relative paths resolve against its folder) and VMs."""

    path: Path
    vms: dict[str, VMSpec] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def vm(self, name: str) -> VMSpec:
        if name not in self.vms:
            known = ", ".join(sorted(self.vms)) or "none"
            raise ConfigError(f"{self.path}: no VM named '{name}' under 'vms' (defined: {known})")
        return self.vms[name]


class _Lines:
    """Line numbers of YAML nodes, so errors can point into the file."""

    def __init__(self, node: yaml.Node | None):
        self.root = node

    def line(self, *keys: str) -> int:
        node, best = self.root, 1
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                break
            for k, v in node.value:
                if k.value == key:
                    best, node = k.start_mark.line + 1, v
                    break
            else:
                break
        return best


def check_name(name: object, where: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{where}: {name!r} is not a valid VM name "
                          "(lowercase letters, digits and '-', at most 40, starting with a letter or digit)")
    return name


def parse_vm(name: str, body: Any, where: str) -> VMSpec:
    """Validate one ``vms.<name>`` mapping; ``where`` prefixes errors."""
    check_name(name, where)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of {sorted(VM_FIELDS)}, got {type(body).__name__}")
    unknown = set(body) - VM_FIELDS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field (allowed: {', '.join(sorted(VM_FIELDS))})")
    cpus = body.get("cpus", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 64:
        raise ConfigError(f"{where}.cpus: {cpus!r} is not a whole number of CPUs between 1 and 64")
    memory = parse_size(body.get("memory", "512M"), f"{where}.memory")
    if memory < MIN_MEMORY:
        raise ConfigError(f"{where}.memory: {format_size(memory)} is below the minimum of 128M")
    disk = parse_size(body.get("disk", "2G"), f"{where}.disk")
    if disk < MIN_DISK:
        raise ConfigError(f"{where}.disk: {format_size(disk)} is smaller than the image's 2G file system")
    image = body.get("image", "debian-12")
    if image not in KNOWN_IMAGES:
        raise ConfigError(f"{where}.image: unknown image {image!r} (known: {', '.join(sorted(KNOWN_IMAGES))})")
    return VMSpec(name=name, cpus=cpus, memory=memory, disk=disk, image=image)


def load_config(path: str | Path) -> Config:
    """Load and validate a config file; raise ConfigError naming file, line and field."""
    path = Path(path).absolute()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        lines = _Lines(yaml.compose(text))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping with a 'vms' section")
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{path}:{lines.line(key)}: {key}: unknown section "
                              f"(allowed: {', '.join(sorted(TOP_LEVEL))})")
    vms_raw = data.get("vms")
    if vms_raw is None:
        vms_raw = {}
    if not isinstance(vms_raw, dict):
        raise ConfigError(f"{path}:{lines.line('vms')}: vms: expected a mapping of VM name to settings")
    config = Config(path=path, raw=data)
    for name, body in vms_raw.items():
        try:
            config.vms[name] = parse_vm(name, body, f"vms.{name}")
        except ConfigError as exc:
            field_path = str(exc).split(":", 1)[0].split(".")
            raise ConfigError(f"{path}:{lines.line(*field_path)}: {exc}") from None
    return config

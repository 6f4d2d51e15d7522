"""VM specs and the YAML config that declares them.

Every bad input gets one error naming the file, the line and the field::

    project.yaml:4: vms.web.memory: '12 parsecs' is not a size (use e.g. 512M or 2G)

Sections other issues add (mounts, agents, backups) are accepted by name so
that one config file can grow; unknown top-level keys are errors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .network import NetworkSpec, parse_network
from .files import write_atomically
from .sizes import format_size, parse_size

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
TOP_LEVEL = {"vms", "mounts", "agents", "forwards", "backups", "defaults"}
VM_FIELDS = {"cpus", "memory", "disk", "image", "user", "arch", "network"}
KNOWN_IMAGES = {"debian-12"}
# Architectures a VM may ask for; whether this host can run one is checked when it is created
# (capabilities.require_arch), so a config stays valid on a host that cannot run it.
KNOWN_ARCHS = ("x86_64", "aarch64")
# A guest account name as useradd(8) accepts it by default.
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
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
    user: str = "root"      # the guest account commands and copies run as unless told otherwise
    arch: str = "x86_64"
    network: NetworkSpec = NetworkSpec()

    def resources(self) -> dict[str, Any]:
        """The fields a mismatch is reported on, in human form."""
        return {"cpus": self.cpus, "memory": format_size(self.memory), "disk": format_size(self.disk),
                "image": self.image, "user": self.user, "arch": self.arch,
                "network": self.network.to_config()}

    def differences(self, other: "VMSpec") -> list[str]:
        """``field: existing X, requested Y`` for each field that differs."""
        mine, theirs = self.resources(), other.resources()
        return [f"{k}: existing {mine[k]}, requested {theirs[k]}" for k in mine if mine[k] != theirs[k]]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cpus": self.cpus, "memory": self.memory, "disk": self.disk, "image": self.image,
                "user": self.user, "arch": self.arch, "network": self.network.to_config()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VMSpec":
        fields = {k: d[k] for k in ("name", "cpus", "memory", "disk", "image", "user", "arch") if k in d}
        if "network" in d:
            fields["network"] = parse_network(d["network"], "network")
        return cls(**fields)


@dataclass(frozen=True)
class MountSpec:
    """A host folder mounted into a VM. ``source`` is absolute (resolved against the config's folder)."""

    source: Path
    target: str
    vm: str
    given: str  # the source as written in the config, to find the entry again
    backup: Path | None = None
    interval: float = 60.0


@dataclass(frozen=True)
class AgentSpec:
    """An agent: how to install it from a host artifact, how to run it, its environment."""

    name: str
    kind: str  # wheel | npm | script
    artifact: Path
    run: str
    env: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """An address and port; the address defaults to loopback so nothing is exposed unless asked."""

    addr: str
    port: int

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}"


@dataclass(frozen=True)
class ForwardSpec:
    """An SSH tunnel to a VM.

    ``local``: ``host`` listens on the host and leads to ``guest`` inside the VM.
    ``remote``: ``guest`` listens inside the VM and leads to ``host`` on the host.
    ``socks5``: ``host`` is a SOCKS5 proxy whose connections leave from the VM."""

    vm: str
    kind: str
    host: Endpoint
    guest: Endpoint | None = None

    def describe(self) -> str:
        if self.kind == "local":
            return f"local {self.host} -> {self.vm} {self.guest}"
        if self.kind == "remote":
            return f"remote {self.vm} {self.guest} -> host {self.host}"
        return f"socks5 {self.host} -> exits from {self.vm}"


@dataclass
class Config:
    """A loaded config file: its path (relative paths resolve against its folder), VMs, mounts, agents."""

    path: Path
    vms: dict[str, VMSpec] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    mounts: list[MountSpec] = field(default_factory=list)
    agents: dict[str, AgentSpec] = field(default_factory=dict)
    forwards: list[ForwardSpec] = field(default_factory=list)
    backend: str | None = None  # defaults.backend: where new VMs of this project run

    def mount(self, source: str) -> MountSpec:
        """The mount entry whose source is ``source`` (as written, or the same folder)."""
        wanted = (self.folder / source).resolve()
        for m in self.mounts:
            if m.given == source or m.source == wanted:
                return m
        known = ", ".join(m.given for m in self.mounts) or "none"
        raise ConfigError(f"{self.path}: no mount of '{source}' under 'mounts' (defined: {known})")

    def agent(self, name: str) -> AgentSpec:
        if name not in self.agents:
            known = ", ".join(sorted(self.agents)) or "none"
            raise ConfigError(f"{self.path}: no agent named '{name}' under 'agents' (defined: {known})")
        return self.agents[name]

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
            if isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
                node = node.value[int(key)]  # mounts[2] -> the third item
                best = node.start_mark.line + 1
                continue
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
    user = check_user(body.get("user", "root"), f"{where}.user")
    arch = body.get("arch", "x86_64")
    if arch not in KNOWN_ARCHS:
        raise ConfigError(f"{where}.arch: unknown architecture {arch!r} (known: {', '.join(KNOWN_ARCHS)})")
    network = parse_network(body.get("network"), f"{where}.network")
    return VMSpec(name=name, cpus=cpus, memory=memory, disk=disk, image=image, user=user, arch=arch,
                  network=network)


def check_user(user: object, where: str = "user") -> str:
    """A guest account name (syntax only: whether the guest has it is known only to the guest)."""
    if not isinstance(user, str) or not USER_RE.match(user):
        raise ConfigError(f"{where}: {user!r} is not a guest user name (lowercase letters, digits, '_' and '-', "
                          "at most 32, not starting with a digit or '-')")
    return user


def load_config(path: str | Path) -> Config:
    """Load and validate a config file; raise ConfigError naming file, line and field."""
    path = Path(path).absolute()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") from None
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
    try:
        for name, body in vms_raw.items():
            config.vms[name] = parse_vm(name, body, f"vms.{name}")
        config.mounts = parse_mounts(data.get("mounts"), config)
        config.agents = parse_agents(data.get("agents"), config.folder)
        config.forwards = parse_forwards(data.get("forwards"), config)
        config.backend = parse_defaults(data.get("defaults")).get("backend")
    except ConfigError as exc:
        field_path = str(exc).split(":", 1)[0].replace("[", ".").replace("]", "").split(".")
        raise ConfigError(f"{path}:{lines.line(*field_path)}: {exc}") from None
    return config


DEFAULT_FIELDS = {"backend"}


def parse_defaults(raw: Any) -> dict[str, Any]:
    """The ``defaults`` section: project-wide settings (today: ``backend``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("defaults: expected a mapping (e.g. backend: libvirt)")
    for key in raw:
        if key not in DEFAULT_FIELDS:
            raise ConfigError(f"defaults.{key}: unknown setting (allowed: {', '.join(sorted(DEFAULT_FIELDS))})")
    if "backend" in raw:
        from .backends import NAMES

        if raw["backend"] not in NAMES:
            raise ConfigError(f"defaults.backend: unknown backend {raw['backend']!r} (known: {', '.join(NAMES)})")
    return dict(raw)


MOUNT_FIELDS = {"source", "target", "vm", "backup", "interval"}
AGENT_FIELDS = {"install", "run", "env"}
ARTIFACT_KINDS = ("wheel", "npm", "script")


def parse_mounts(raw: Any, config: Config) -> list[MountSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("mounts: expected a list of {source, target, vm}")
    mounts: list[MountSpec] = []
    for i, body in enumerate(raw):
        where = f"mounts[{i}]"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping with source, target and vm")
        unknown = set(body) - MOUNT_FIELDS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field (allowed: {', '.join(sorted(MOUNT_FIELDS))})")
        for key in ("source", "target", "vm"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise ConfigError(f"{where}.{key}: required, a non-empty string")
        if not body["target"].startswith("/") or "\0" in body["target"]:
            raise ConfigError(f"{where}.target: {body['target']!r} must be an absolute guest path")
        if body["vm"] not in config.vms:
            raise ConfigError(f"{where}.vm: no VM named {body['vm']!r} under 'vms'")
        interval = body.get("interval", 60)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise ConfigError(f"{where}.interval: {interval!r} is not a positive number of seconds")
        backup = body.get("backup")
        if backup is not None and not isinstance(backup, str):
            raise ConfigError(f"{where}.backup: expected a folder path")
        m = MountSpec(source=(config.folder / body["source"]).resolve(), target=body["target"].rstrip("/") or "/",
                      vm=body["vm"], given=body["source"], interval=float(interval),
                      backup=(config.folder / backup).resolve() if backup else None)
        for other in mounts:
            if other.vm == m.vm and other.target == m.target:
                raise ConfigError(f"{where}.target: {m.target} is already the target of {other.given!r} in {m.vm}")
        mounts.append(m)
    return mounts


def parse_agents(raw: Any, folder: Path) -> dict[str, AgentSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("agents: expected a mapping of agent name to settings")
    agents = {}
    for name, body in raw.items():
        where = f"agents.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{where}: {name!r} is not a valid agent name")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping with install and run")
        unknown = set(body) - AGENT_FIELDS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field (allowed: {', '.join(sorted(AGENT_FIELDS))})")
        install = body.get("install")
        if not isinstance(install, dict) or len(install) != 1 or next(iter(install)) not in ARTIFACT_KINDS:
            raise ConfigError(f"{where}.install: expected one of {{wheel: PATH}}, {{npm: PATH}}, {{script: PATH}}")
        kind, artifact = next(iter(install.items()))
        if not isinstance(artifact, str):
            raise ConfigError(f"{where}.install.{kind}: expected a path to the artifact")
        if not isinstance(body.get("run"), str) or not body["run"].strip():
            raise ConfigError(f"{where}.run: required, the command that runs the agent")
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
            raise ConfigError(f"{where}.env: expected a mapping of variable names to values")
        agents[name] = AgentSpec(name, kind, (folder / artifact).resolve(), body["run"],
                                 {k: str(v) for k, v in env.items()})
    return agents


FORWARD_FIELDS = {"vm", "kind", "host", "guest"}
FORWARD_KINDS = ("local", "remote", "socks5")


def parse_endpoint(value: Any, where: str) -> Endpoint:
    """``8080`` or ``"0.0.0.0:8080"``; a bare port binds to 127.0.0.1."""
    addr, port = "127.0.0.1", value
    if isinstance(value, str):
        addr, _, port = value.rpartition(":")
        addr = addr.strip("[]") or "127.0.0.1"
        port = int(port) if port.isdigit() else port
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{where}: {value!r} is not a port (1-65535) or ADDRESS:PORT")
    return Endpoint(addr, port)


def parse_forwards(raw: Any, config: Config) -> list[ForwardSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("forwards: expected a list of {vm, kind, host, guest}")
    forwards: list[ForwardSpec] = []
    for i, body in enumerate(raw):
        where = f"forwards[{i}]"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping with vm, kind, host and guest")
        unknown = set(body) - FORWARD_FIELDS
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field "
                              f"(allowed: {', '.join(sorted(FORWARD_FIELDS))})")
        if body.get("vm") not in config.vms:
            raise ConfigError(f"{where}.vm: no VM named {body.get('vm')!r} under 'vms'")
        kind = body.get("kind")
        if kind not in FORWARD_KINDS:
            raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(FORWARD_KINDS)}")
        if "host" not in body:
            raise ConfigError(f"{where}.host: required, a port or ADDRESS:PORT")
        if kind == "socks5" and "guest" in body:
            raise ConfigError(f"{where}.guest: a socks5 forward has no guest end (its connections leave from the VM)")
        if kind != "socks5" and "guest" not in body:
            raise ConfigError(f"{where}.guest: required for a {kind} forward, a port or ADDRESS:PORT")
        f = ForwardSpec(body["vm"], kind, parse_endpoint(body["host"], f"{where}.host"),
                        parse_endpoint(body["guest"], f"{where}.guest") if kind != "socks5" else None)
        listens = (lambda x: (x.vm, x.guest.port)) if kind == "remote" else (lambda x: ("host", x.host.port))
        for j, other in enumerate(forwards):
            other_listens = (other.vm, other.guest.port) if other.kind == "remote" else ("host", other.host.port)
            if other_listens == listens(f):
                side = "guest" if kind == "remote" else "host"
                raise ConfigError(f"{where}.{side}: port {listens(f)[1]} already listens for forwards[{j}]")
        forwards.append(f)
    return forwards


def check_config(config: Config, data: dict) -> Config:
    """Validate ``data`` as a new version of ``config`` (relative paths resolve against its folder).

    Errors name the real config file, not the temporary one used to check."""
    tmp = config.path.with_name(f".{config.path.name}.{os.getpid()}.check")
    try:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        checked = load_config(tmp)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(str(tmp), str(config.path))) from None
    finally:
        tmp.unlink(missing_ok=True)
    checked.path = config.path
    return checked


def save_config(config: Config, data: dict) -> Config:
    """Replace the config file with ``data`` atomically, only if ``data`` is a valid config.

    A bad edit or a crash leaves the old file whole (temporary file + rename).
    Comments in the file are not preserved.
    """
    checked = check_config(config, data)
    write_atomically(config.path, yaml.safe_dump(data, sort_keys=False))
    return checked

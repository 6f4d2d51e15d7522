"""Multipass backend: VMs run by Canonical's Multipass daemon, driven through its CLI.

Multipass has no Python API (its client talks gRPC to ``multipassd`` over a socket
guarded by snap confinement), so this backend runs the ``multipass`` command and reads
``--format json``. Every instance vmfixtures owns is called ``vmfx-<name>``; instances
without that prefix are never touched.

Multipass ships only as a snap and cannot run on the host this was written on, so the
code follows the documented CLI (docs/reference/command-line-interface/*.md in
canonical/multipass) and is only unit-tested, against outputs transcribed from
Multipass's own docs and test data.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import (
    ConfigError,
    GuestError,
    Mismatch,
    MissingDependency,
    NotFound,
    PermissionDenied,
    Timeout,
)
from ..guest.result import ExecResult
from ..spec import VMSpec
from .base import DISK_HOTPLUG, Backend, CreateResult, DestroyProof, StopResult, VMState

PREFIX = "vmfx-"
# Multipass's state names (src/client/cli/formatter/format_utils.cpp), lower-cased; the
# ones not listed stay as they are ("starting", "delayed shutdown", "unknown", ...).
_STATES = {"running": "running", "stopped": "stopped", "suspended": "stopped", "deleted": "missing"}
# States in which the VM is up, or on its way up or down: its hypervisor process is alive.
_ALIVE = {"running", "starting", "restarting", "delayed shutdown", "suspending"}
# The daemon's words for an absent instance: `instance "x" does not exist` (most commands),
# `instance 'x' does not exist` (mount/umount), `Instance 'x' is deleted. ...` (start).
_ABSENT = re.compile(r"instance ['\"][^'\"]+['\"] (does not exist|is deleted)", re.IGNORECASE)
_EXEC_FAILED = re.compile(r"^exec failed: ", re.MULTILINE)  # src/client/cli/cmd/exec.cpp

Runner = Callable[[list[str], bytes | None, float], subprocess.CompletedProcess]


@dataclass(frozen=True)
class InstanceInfo:
    """One instance as ``multipass info``/``list`` report it. Sizes in bytes; None when not reported."""

    name: str
    state: str
    ipv4: tuple[str, ...] = ()
    image: str = ""    # info's image_release, e.g. "24.04 LTS"
    release: str = ""  # the running release, e.g. "Ubuntu 24.04.1 LTS"
    cpus: int | None = None
    memory: int | None = None
    disk: int | None = None
    mounts: dict[str, str] = field(default_factory=dict)  # guest path -> host path


def _top(text: str | bytes, key: str, kind: type) -> Any:
    """The document's ``key`` member (``info``, ``list``), checked to be a ``kind``."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError) as e:
        raise GuestError(f"multipass {key}: output is not JSON ({e})") from None
    return _need(_need(doc, dict, f"{key} output").get(key), kind, key)


def _need(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise GuestError(f"multipass JSON: {where} should be a {kind.__name__}, got {type(value).__name__}")
    return value


def _number(value: Any, where: str) -> int | None:
    """Multipass prints some numbers as strings ("cpu_count": "1"), and "" or nothing when unknown."""
    if value is None or value == "":
        return None
    if (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    raise GuestError(f"multipass JSON: {where} is {value!r}, not a number")


def _basics(name: Any, d: dict, where: str) -> dict[str, Any]:
    """The fields ``info`` and ``list`` share: name, state, ipv4 (the docs show [""] for none)."""
    state = _need(d.get("state"), str, f"{where}.state").lower()
    return {"name": _need(name, str, f"{where}.name"), "state": _STATES.get(state, state),
            "ipv4": tuple(a for a in _need(d.get("ipv4") or [], list, f"{where}.ipv4") if a)}


def _instance(name: str, d: dict, where: str) -> InstanceInfo:
    memory = _need(d.get("memory") or {}, dict, f"{where}.memory")
    # "disks" is {"sda1": {"used": "...", "total": "..."}}, sizes as strings, {} when stopped
    totals = [_number(_need(v, dict, f"{where}.disks.{k}").get("total"), f"{where}.disks.{k}.total")
              for k, v in _need(d.get("disks") or {}, dict, f"{where}.disks").items()]
    totals = [t for t in totals if t is not None]
    mounts = _need(d.get("mounts") or {}, dict, f"{where}.mounts")  # keyed by the guest path
    return InstanceInfo(
        **_basics(name, d, where), image=str(d.get("image_release") or ""), release=str(d.get("release") or ""),
        cpus=_number(d.get("cpu_count"), f"{where}.cpu_count"),
        memory=_number(memory.get("total"), f"{where}.memory.total"), disk=sum(totals) if totals else None,
        mounts={guest: str(_need(m, dict, f"{where}.mounts.{guest}").get("source_path", ""))
                for guest, m in mounts.items()})


def parse_info(json_text: str | bytes) -> dict[str, InstanceInfo]:
    """``multipass info --format json``: ``{"errors": [], "info": {name: {...}}}`` -> name -> InstanceInfo."""
    info = _top(json_text, "info", dict)
    # an entry with only "snapshots" (info --snapshots) describes snapshots, not the instance
    return {name: _instance(name, _need(d, dict, f"info.{name}"), f"info.{name}")
            for name, d in info.items() if not (isinstance(d, dict) and "snapshots" in d and "state" not in d)}


def parse_list(json_text: str | bytes) -> list[InstanceInfo]:
    """``multipass list --format json``: ``{"list": [{"name", "state", "ipv4", "release"}, ...]}``."""
    out = []
    for i, d in enumerate(_top(json_text, "list", list)):
        release = str(_need(d, dict, f"list[{i}]").get("release") or "")
        # json_formatter.cpp writes "Not Available" when the release is not known
        out.append(InstanceInfo(**_basics(d.get("name"), d, f"list[{i}]"),
                                release="" if release == "Not Available" else release))
    return out


def _size(n: int) -> str:
    """Bytes as ``launch`` takes them: K, M, G are powers of 1024 (src/utils/memory_size.cpp); no T."""
    for unit, k in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n % k == 0:
            return f"{n // k}{unit}"
    return str(n)


def _image(image: str) -> str:
    """The project's image name as Multipass's ("ubuntu-24.04" -> "24.04"); aliases and URLs pass through."""
    if image.startswith("ubuntu-"):
        return image[len("ubuntu-"):]
    if image.startswith("debian"):
        raise ConfigError(f"image '{image}': Multipass launches Ubuntu images only (custom Debian images fail, "
                          "canonical/multipass#2564); use e.g. image: ubuntu-24.04")
    return image


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _subprocess_runner(argv: list[str], input: bytes | None, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)


class MultipassBackend(Backend):
    """VMs as Multipass instances named ``vmfx-<name>``. No optional capabilities: Multipass offers
    no memory snapshots a pool could restore, no dirty bitmaps and no disk hot-plug."""

    name = "multipass"
    lacking = {DISK_HOTPLUG: "Multipass has no command that attaches a disk to an instance, running or not "
                             "(`launch --disk` only sizes the system disk)"}

    def __init__(self, storage: Path | None = None, quiet: bool = False, runner: Runner | None = None,
                 binary: str = "multipass"):
        self.storage = storage  # unused: multipassd keeps instances in its own (snap) storage
        self.quiet = quiet      # output is always captured; nothing is printed either way
        self.runner, self.binary = runner or _subprocess_runner, binary
        self.launch_timeout, self.stop_timeout = 600.0, 60.0

    def _call(self, *args: str, input: bytes | None = None, timeout: float = 120.0,
              check: bool = True) -> subprocess.CompletedProcess:
        argv = [self.binary, *args]
        try:
            proc = self.runner(argv, input, timeout)
        except FileNotFoundError:
            raise MissingDependency(f"'{self.binary}' not found: Multipass ships as a snap "
                                    "(sudo snap install multipass)") from None
        except subprocess.TimeoutExpired:
            raise Timeout(f"`{shlex.join(argv)}` ran past {timeout:g}s") from None
        if check and proc.returncode != 0:
            raise self._error(argv, proc)
        return proc

    @staticmethod
    def _error(argv: list[str], proc: subprocess.CompletedProcess) -> Exception:
        """One line: the command, its exit code and the tail of its stderr."""
        err = _text(proc.stderr)
        tail = " | ".join(line.strip() for line in err.strip().splitlines()[-3:])[-300:] or "(no stderr)"
        msg = f"`{shlex.join(argv)}` exited {proc.returncode}: {tail}"
        if _ABSENT.search(err):
            return NotFound(msg)
        if "multipass socket access denied" in err:
            return PermissionDenied(msg)
        # an unreachable socket is exit 2 (include/multipass/cli/dispatch_rpc.h), a daemon gone exit 3
        # (ReturnCode::DaemonFail in include/multipass/cli/return_codes.h)
        if proc.returncode == 3 or "cannot connect to the multipass socket" in err:
            return GuestError(f"{msg} (is multipassd running? `snap services multipass`)")
        return GuestError(msg)

    def names(self) -> list[str]:
        """Our VMs (``vmfx-`` instances, prefix stripped); deleted-but-unpurged ones count as gone."""
        listed = parse_list(self._call("list", "--format", "json").stdout)
        return sorted(i.name[len(PREFIX):] for i in listed if i.name.startswith(PREFIX) and i.state != "missing")

    def info(self, name: str) -> InstanceInfo:
        """What ``multipass info`` reports for VM ``name``; NotFound when there is no such instance."""
        inst = PREFIX + name
        found = parse_info(self._call("info", "--format", "json", inst).stdout).get(inst)
        if found is None:
            raise GuestError(f"`multipass info {inst}` succeeded but did not describe {inst}")
        return found

    def state(self, name: str) -> VMState:
        try:
            return self._vm_state(self.info(name))
        except NotFound:
            return VMState.MISSING

    @staticmethod
    def _vm_state(info: InstanceInfo) -> VMState:
        if info.state in _ALIVE:
            return VMState.RUNNING
        if info.state in ("stopped", "missing"):
            return VMState(info.state)
        raise GuestError(f"instance '{info.name}' is in state '{info.state}', which vmfixtures cannot act on")

    def create(self, spec: VMSpec, start: bool = True, owner_pid: int | None = None) -> CreateResult:
        """Launch ``vmfx-<name>``; ``exists`` when it is already there with the same CPU count.

        ``owner_pid`` is accepted for the common contract and ignored: multipassd owns the VM.
        Multipass cannot create without booting, so ``start=False`` launches, then stops."""
        inst, image = PREFIX + spec.name, _image(spec.image)
        try:
            info = self.info(spec.name)
        except NotFound:
            info = None
        if info is not None and info.state != "missing":
            # only the CPU count compares: info's memory and disk totals are what the guest sees
            if info.cpus is not None and info.cpus != spec.cpus:
                raise Mismatch(f"VM '{spec.name}' exists with a different spec; nothing was changed: "
                               f"cpus: existing {info.cpus}, requested {spec.cpus}")
            return CreateResult(spec.name, "exists", self._vm_state(info))
        if info is not None:  # our deleted-but-unpurged leftover would block the name
            self._call("delete", "--purge", inst)
        self._call("launch", "--name", inst, "--cpus", str(spec.cpus), "--memory", _size(spec.memory),
                   "--disk", _size(spec.disk), "--timeout", str(int(self.launch_timeout)), image,
                   timeout=self.launch_timeout + 60)
        if not start:
            self._call("stop", inst, timeout=self.stop_timeout)
        return CreateResult(spec.name, "created", VMState.RUNNING if start else VMState.STOPPED)

    def start(self, name: str):
        """Boot the VM; returns its guest channel once Multipass reports it up."""
        self._call("start", PREFIX + name, timeout=self.launch_timeout)
        return self.machine(name)

    def spec(self, name: str) -> VMSpec:
        """The VM as the guest reports it (Multipass keeps no record of what was asked)."""
        info = self.info(name)
        return VMSpec(name=name, cpus=info.cpus or 1, memory=info.memory or 512 * 1024**2,
                      disk=info.disk or 2 * 1024**3, image=f"ubuntu-{info.image.split()[0]}" if info.image else "ubuntu")

    def process_id(self, name: str):
        """None: the hypervisor process belongs to multipassd, which does not say which it is."""
        return None

    def machine(self, name: str):
        """The guest through ``multipass exec`` (no guest agent, no console socket)."""
        from ..machine import Machine

        if self.state(name) != VMState.RUNNING:
            raise GuestError(f"VM '{name}' is not running")
        return Machine(name=name, run_dir=Path("/nonexistent"), console_log=Path("/nonexistent"), ssh_port=None,
                       host_key="", key_path=Path("/nonexistent"), accel="multipass",
                       agent=ExecChannel(self, name))

    def stop(self, name: str, timeout: float | None = None) -> StopResult:
        """Shut down gracefully; after ``timeout`` seconds (at once if the state is unknown) power off
        with ``stop --force``, there from Multipass 1.14 on (docs/reference/command-line-interface/stop.md)."""
        inst, t0 = PREFIX + name, time.monotonic()
        info = self.info(name)
        if info.state == "missing":
            raise NotFound(f"Multipass instance '{inst}' is deleted")
        if info.state == "stopped":
            return StopResult(name, True, 0.0)
        if info.state in _ALIVE:
            try:
                self._call("stop", inst, timeout=timeout or self.stop_timeout)
                return StopResult(name, True, time.monotonic() - t0)
            except Timeout:
                pass  # only the client was killed; multipassd is still shutting it down
        self._call("stop", "--force", inst)  # before 1.14: exit 1 (CommandLineError), unknown option
        return StopResult(name, False, time.monotonic() - t0)

    def restart(self, name: str):
        self._call("restart", PREFIX + name, timeout=self.launch_timeout)
        return self.machine(name)

    def destroy(self, name: str) -> DestroyProof:
        """``delete --purge`` (nothing left to ``recover``), then check that ``list`` no longer shows it.

        The hypervisor process hides behind multipassd, so there is no pid to report."""
        inst = PREFIX + name
        self._call("delete", "--purge", inst)
        left = any(i.name == inst for i in parse_list(self._call("list", "--format", "json").stdout))
        return DestroyProof(name, pid=None, process_gone=not left, removed=[inst], leftovers=[inst] if left else [])

    def exec(self, name: str, argv: list[str], input: bytes | None = None, timeout: float = 60) -> ExecResult:
        """Run ``argv`` in the guest (as user ``ubuntu``); the command's exit code comes back unchanged.

        ``--no-map-working-directory`` (Multipass >= 1.10) keeps Multipass from cd-ing into a
        mount when the host's current folder happens to be mounted in the guest."""
        args = ["exec", PREFIX + name, "--no-map-working-directory", "--", *argv]
        proc = self._call(*args, input=input, timeout=timeout, check=False)
        stderr = _text(proc.stderr)
        if proc.returncode != 0 and _EXEC_FAILED.search(stderr):  # Multipass failed, not the command
            raise self._error([self.binary, *args], proc)
        return ExecResult(shlex.join(argv), proc.returncode, _text(proc.stdout), stderr)

    def transfer_in(self, name: str, host_path: Path | str, guest_path: str) -> None:
        """Copy a host file or folder into the guest. The snap-confined client sees the host's
        home folders, not its /tmp (snap confinement gives every snap a private /tmp)."""
        # --recursive (Multipass >= 1.11) is harmless for a single file
        self._call("transfer", "--recursive", str(host_path), f"{PREFIX}{name}:{guest_path}", timeout=600)

    def transfer_out(self, name: str, guest_path: str, host_path: Path | str) -> None:
        self._call("transfer", "--recursive", f"{PREFIX}{name}:{guest_path}", str(host_path), timeout=600)

    def mount(self, name: str, host: Path | str, guest: str) -> None:
        """Mount a host folder; snap confinement refuses folders outside /home and hidden ones
        (docs/explanation/mount.md)."""
        self._call("mount", str(host), f"{PREFIX}{name}:{guest}")

    def umount(self, name: str, guest: str) -> None:
        self._call("umount", f"{PREFIX}{name}:{guest}")


class ExecChannel:
    """What callers use of a guest agent (exec, files, clock), done with ``multipass exec``."""

    def __init__(self, backend: MultipassBackend, name: str):
        self.backend, self.name = backend, name

    def exec(self, argv: list[str], input: bytes | None = None, env: dict[str, str] | None = None,
             timeout: float = 60.0) -> ExecResult:
        if env:
            argv = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        return self.backend.exec(self.name, ["sudo", *argv], input=input, timeout=timeout)

    def read_file(self, path: str, timeout: float = 30.0) -> bytes:
        proc = self.backend._call("exec", PREFIX + self.name, "--", "sudo", "cat", path, timeout=timeout)
        return proc.stdout if isinstance(proc.stdout, bytes) else proc.stdout.encode()

    def write_file(self, path: str, data: bytes, timeout: float = 30.0) -> None:
        self.backend._call("exec", PREFIX + self.name, "--", "sudo", "tee", path, input=data, timeout=timeout)

    def set_time(self, ns: int | None = None) -> None:
        pass  # the guest keeps its own clock (NTP); Multipass VMs are never restored from a snapshot

    def close(self) -> None:
        pass

"""The system under test, as the specification sees it: operator actions in, outcomes out.

A product adapter turns an operator action ("back up this folder once") into
the product's own command line, runs it, and reads back an ``Outcome``: done,
or refused with a kind (unknown VM, bad config, busy, ...), or failed, with the
output to show when a check fails. Wording and exit codes live in adapters;
steps never look at them. Whether the product was *right* is decided by
``host.Host`` from independent facts, never by the product's own code.
"""

from __future__ import annotations

import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import Unsupported

# What an outcome can be: the operator's action was carried out, or refused for
# a stated reason (a refusal is the product working as intended), or it failed.
DONE, REFUSED, FAILED = "done", "refused", "failed"

# Kinds of refusal the specification talks about, whatever the product's wording.
UNKNOWN_VM, BAD_CONFIG, BUSY, MISSING_SOURCE, NOT_WRITABLE, CORRUPT, EXISTS, MISMATCH, MISSING_TOOL, \
    NOT_RUNNING, UNSUPPORTED = ("unknown-vm", "bad-config", "busy", "missing-source", "not-writable", "corrupt",
                                "exists", "mismatch", "missing-tool", "not-running", "unsupported")
UNKNOWN_AGENT, UNKNOWN_SNAPSHOT, MISSING_ARTIFACT, BROKEN_CHAIN, NO_TUNNEL = (
    "unknown-agent", "unknown-snapshot", "missing-artifact", "broken-chain", "no-tunnel")
# a guest account the VM does not have; a file or folder (host or guest) that does not exist
UNKNOWN_USER, MISSING_PATH = "unknown-user", "missing-path"
UNKNOWN_DISK = "unknown-disk"
NO_SPACE = "no-space"  # the destination filled up

# Remarks on a done outcome (``Outcome.note``): nothing needed doing (EXISTS: what was asked for was there already).
NOTHING_CHANGED = "nothing-changed"


@dataclass
class Outcome:
    """What became of one operator action.

    Besides status and refusal kind, an adapter fills in what the product's answer *names*, in
    neutral form, so a scenario whose rule is about what the operator is told can check it without
    knowing the wording: ``subject`` (the VM, agent, snapshot, guest path or address the answer is
    about), ``where`` (config file and line of a config error) and ``config_field`` (its field path),
    ``differences`` (field -> (existing, requested) of a mismatch), ``holder`` (the pid holding a busy
    resource) and ``data`` (machine-readable output: status rows, backup chains, ...). ``process`` is
    a long-running command that is still running (port forwarding)."""

    action: str
    status: str                 # done | refused | failed
    refusal: str | None = None  # one of the kinds above, when refused
    note: str | None = None     # a product-independent remark, e.g. "nothing-changed"
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    argv: list[str] = field(default_factory=list)
    subject: str | None = None
    where: tuple[str, int | None] | None = None
    config_field: str | None = None
    differences: dict[str, tuple[str, str]] = field(default_factory=dict)
    holder: int | None = None
    data: Any = None
    process: Any = None

    @property
    def done(self) -> bool:
        return self.status == DONE

    @property
    def crashed(self) -> bool:
        """The product died of an unhandled error (a Python traceback) instead of saying what went wrong."""
        return "Traceback (most recent call last)" in self.stderr

    def refused_for(self, kind: str, subject: str | None = None) -> bool:
        """Refused for ``kind`` (and, when given, naming ``subject``)."""
        return self.status == REFUSED and self.refusal == kind and (subject is None or self.subject == subject)

    def describe(self) -> str:
        """For assertion messages: what ran and what it said."""
        what = f"{self.status}" + (f" ({self.refusal})" if self.refusal else "")
        named = {k: v for k, v in (("subject", self.subject), ("where", self.where),
                                   ("config_field", self.config_field), ("differences", self.differences),
                                   ("holder", self.holder), ("note", self.note)) if v}
        return (f"`{' '.join(self.argv)}` -> {what}, exit {self.exit_code}{f' {named}' if named else ''}\n"
                f"  stdout: {self.stdout.strip()[-600:]!r}\n  stderr: {self.stderr.strip()[-600:]!r}")


class Product(ABC):
    """A product the specification can judge. Each adapter says what it supports; a scenario
    about something else skips with ``lacks(capability)`` as its reason."""

    name: str
    #: capabilities (features' capability tags) this product offers
    supports: frozenset[str] = frozenset()
    #: the installed Python distribution whose version the product reports (None: not a Python package)
    distribution: str | None = None
    #: PATH the product's commands run with (None: the run's own); a step hides host tools with it
    search_path: str | None = None

    def lacks(self, capability: str | None) -> str | None:
        """None when supported (or when the feature names no capability), else the reason a
        scenario about ``capability`` skips."""
        if capability is None or capability in self.supports:
            return None
        return f"{self.name} does not offer {capability} (it offers: {', '.join(sorted(self.supports))})"

    def _unsupported(self, what: str):
        raise Unsupported(f"{self.name} has no way to {what}")

    @staticmethod
    def at_time(argv: list[str], at: datetime | None) -> list[str]:
        """``argv`` run with its clock set to ``at`` (libfaketime), so a history spread over hours
        is made by the product itself in a second."""
        if at is None:
            return argv
        if not shutil.which("faketime"):
            raise Unsupported("setting a product's clock needs faketime (Debian package faketime)")
        return ["faketime", at.strftime("%Y-%m-%d %H:%M:%S"), *argv]

    @abstractmethod
    def version(self) -> str:
        """The product's own version string, for reports."""

    # -- config ------------------------------------------------------------
    @abstractmethod
    def render_config(self, model: dict) -> str:
        """The product's config file for ``model`` (vms, mounts, agents, forwards in neutral form)."""

    # -- folder backups ----------------------------------------------------
    def backup_once(self, source: Path, dest: Path, at: datetime | None = None) -> Outcome:
        """One snapshot of ``source`` into ``dest``; ``at`` sets the product's clock (see ``at_time``)."""
        self._unsupported("back up a folder once")

    def start_backup_once(self, source: Path, dest: Path):
        """``backup_once`` as a running process (a Background), for a step that interrupts it."""
        self._unsupported("back up a folder once in the background")

    def backup_repeated(self, source: Path, dest: Path, interval: float) -> subprocess.Popen:
        self._unsupported("back up a folder repeatedly")

    def backup_repeated_mount(self, source: str) -> subprocess.Popen:
        self._unsupported("back up a mount repeatedly")

    def backup_repeated_all(self) -> subprocess.Popen:
        self._unsupported("back up every mount repeatedly")

    #: the shortest interval repeated backups can be given, in seconds
    min_interval: float = 1.0

    def clean_tail(self, source: Path, dest: Path, keep: int) -> Outcome:
        """Keep the ``keep`` newest snapshots of ``source`` in ``dest``."""
        self._unsupported("keep the newest snapshots")

    def clean_thin(self, source: Path, dest: Path, keep: int) -> Outcome:
        """Thin the snapshots of ``source`` in ``dest`` down to ``keep``."""
        self._unsupported("thin snapshots")

    #: strftime pattern the product names its snapshot folders with
    snapshot_format: str | None = None

    def snapshot_name(self, when: datetime) -> str:
        """The folder name the product gives a snapshot taken at ``when`` (its naming, not a check)."""
        if not self.snapshot_format:
            self._unsupported("name snapshots")
        return when.strftime(self.snapshot_format)

    # -- VM lifecycle (each acts on one VM of the config; ``*_all_vms`` on every VM of it) ------------
    def create_vm(self, name: str) -> Outcome:
        """Create and start ``name``; a VM already there with the same spec is done with note EXISTS
        and ``subject`` its name; another spec is refused (MISMATCH) with ``differences``."""
        self._unsupported("create a VM")

    def create_all_vms(self) -> Outcome:
        self._unsupported("create every VM of the config")

    def start_vm(self, name: str) -> Outcome:
        self._unsupported("start a VM")

    def start_all_vms(self) -> Outcome:
        self._unsupported("start every VM of the config")

    def stop_vm(self, name: str, deadline: float | None = None) -> Outcome:
        """Power ``name`` off, forcing it after ``deadline`` seconds (the product's default when None)."""
        self._unsupported("stop a VM")

    def stop_all_vms(self) -> Outcome:
        self._unsupported("stop every VM of the config")

    def restart_vm(self, name: str) -> Outcome:
        self._unsupported("restart a VM")

    def restart_all_vms(self) -> Outcome:
        self._unsupported("restart every VM of the config")

    def destroy_vm(self, name: str) -> Outcome:
        self._unsupported("destroy a VM")

    def destroy_all_vms(self) -> Outcome:
        self._unsupported("destroy every VM of the config")

    def list_vms(self) -> Outcome:
        """``data``: one dict per VM the product knows, with at least name and state."""
        self._unsupported("list VMs")

    def network_info(self, name: str) -> Outcome:
        """``data``: {"profile": nat|filtered|isolated, "allow": [ports], "addresses": ["a.b.c.d/n", ...]}."""
        self._unsupported("report a VM's network")

    def accelerator(self) -> Outcome:
        """``data``: {"name": the accelerator VMs run on (kvm, tcg, ...), "reason": why}."""
        self._unsupported("report the accelerator")

    # -- mounts --------------------------------------------------------------------------
    def mount(self, source: str) -> Outcome:
        self._unsupported("mount a folder")

    def mount_all(self) -> Outcome:
        self._unsupported("mount every folder of the config")

    def unmount(self, source: str) -> Outcome:
        self._unsupported("unmount a folder")

    def add_mount(self, source: str, target: str, vm: str) -> Outcome:
        """Mount ``source`` at ``target`` in ``vm`` and add it to the config."""
        self._unsupported("add a mount")

    def remove_mount(self, source: str) -> Outcome:
        """Unmount ``source`` and drop it from the config."""
        self._unsupported("remove a mount")

    # -- agents --------------------------------------------------------------------------
    def install_agent(self, name: str) -> Outcome:
        self._unsupported("install an agent")

    def install_all_agents(self) -> Outcome:
        self._unsupported("install every agent of the config")

    def run_agent(self, name: str, backups: bool = True, args: tuple[str, ...] = ()) -> Outcome:
        """Run agent ``name`` in its mounted project to its end (``args`` passed to it). Done when the
        agent ran, whatever it exited with: ``data`` is {"exit_code": the agent's exit code}."""
        self._unsupported("run an agent")

    def start_agent(self, name: str):
        """Start agent ``name`` and return at once: a ``testkit.Background`` to end with ``agent_ended``."""
        self._unsupported("start an agent in the background")

    def agent_ended(self, run, timeout: float = 60) -> Outcome:
        """Wait for a run from ``start_agent`` to end; an Outcome as ``run_agent`` gives."""
        self._unsupported("wait for an agent run")

    # -- connectivity --------------------------------------------------------------------
    def ssh(self, name: str, command: str) -> Outcome:
        """Run ``command`` in ``name`` over SSH; its output is the outcome's stdout."""
        self._unsupported("run a command over SSH")

    def shell(self, name: str, typed: str) -> Outcome:
        """An interactive shell on ``name`` fed ``typed`` (lines) and left."""
        self._unsupported("open a shell")

    def status(self) -> Outcome:
        """``data``: VM name -> {"state", "cpus", "memory", "mounts": [{"source", "target", "mounted",
        "last_backup"}], "agents": [{"name", "pids" (the guest's)}]} for each VM of the config."""
        self._unsupported("report the project's status")

    # -- files and commands --------------------------------------------------------------
    def copy_into(self, name: str, source: Path, target: str) -> Outcome:
        """Copy host file ``source`` into VM ``name`` at guest path ``target`` (a file name, or an
        existing folder the file keeps its name in)."""
        self._unsupported("copy a file into a VM")

    def copy_out(self, name: str, source: str, target: Path) -> Outcome:
        """Copy guest file ``source`` of VM ``name`` to host path ``target``."""
        self._unsupported("copy a file out of a VM")

    def start_copy_into(self, name: str, source: Path, target: str):
        """``copy_into`` as a running process (a ``testkit.Background``; ``.proc`` is the product's own
        process, for the host to measure), ended with ``copy_ended``."""
        self._unsupported("copy a file into a VM in the background")

    def start_copy_out(self, name: str, source: str, target: Path):
        self._unsupported("copy a file out of a VM in the background")

    def copy_ended(self, copy, timeout: float = 600) -> Outcome:
        self._unsupported("wait for a copy")

    def run_command(self, name: str, command: list[str], cwd: str | None = None, env: dict | None = None,
                    user: str | None = None) -> Outcome:
        """Run ``command`` (an argv) in VM ``name``, in guest folder ``cwd``, with ``env`` added, as guest
        ``user`` (the VM's own when None). Done when the command ran, whatever it exited with: ``data``
        is {"exit_code": its exit code}, ``stderr`` its error output; refused when it could not run."""
        self._unsupported("run a command in a VM")

    def start_command(self, name: str, command: list[str]):
        """``run_command`` as a running process (``.proc`` the product's own, for the host to measure),
        ended with ``command_ended``."""
        self._unsupported("run a command in a VM in the background")

    def command_ended(self, run, timeout: float = 120) -> Outcome:
        self._unsupported("wait for a command")

    # -- the serial console --------------------------------------------------------------
    def start_console(self, name: str, into: Path):
        """Print VM ``name``'s serial console into host file ``into``, as a running process (``.proc``
        the product's own, for the host to measure), ended with ``console_ended``."""
        self._unsupported("print a VM's console")

    def console_ended(self, run, timeout: float = 120) -> Outcome:
        self._unsupported("wait for the console to be printed")

    # -- port forwarding -----------------------------------------------------------------
    def start_forwarding(self, timeout: float) -> Outcome:
        """Bring the config's tunnels up. Done once the product says they are up, with ``process``
        the running forwarder; refused or failed when it ended instead."""
        self._unsupported("forward ports")

    def stop_forwarding(self, process) -> Outcome:
        """Stop a forwarder from ``start_forwarding`` the way an operator does (Ctrl-C)."""
        self._unsupported("stop port forwarding")

    # -- VM disk backups -----------------------------------------------------------------
    #: host commands the product's disk backups need besides itself (a step hides them to see it say so)
    disk_backup_tools: tuple[str, ...] = ()

    def disk_backup(self, name: str, dest: Path, group_by: str | None = None, full: bool = False) -> Outcome:
        """Back up VM ``name``'s disk into ``dest``; ``name`` may be a shell-style pattern (``web*``): every
        running VM it matches. A pattern matching none is refused (UNKNOWN_VM, ``subject`` the pattern)."""
        self._unsupported("back up a VM's disk")

    def disk_backups(self, dest: Path) -> Outcome:
        """``data``: the chains in ``dest``, oldest first: {"chain": folder, "vm": its VM, "links": [{"kind": "full" |
        "incremental", "file": path, "at": when}]}."""
        self._unsupported("list disk backups")

    def disk_backup_status(self, dest: Path, human: bool = False) -> Outcome:
        """The backups in ``dest`` and their VMs' checkpoints: for people (``stdout``) when ``human``, else
        ``data`` {"chains": [{"chain": folder, ...}], "vms": {vm: {"checkpoints": [names]}}}."""
        self._unsupported("report the status of disk backups")

    def prune_disk_backups(self, dest: Path, keep: int) -> Outcome:
        self._unsupported("prune disk backups")

    def scrub_backup_bitmap(self, name: str, checkpoint: str | None = None) -> Outcome:
        """Forget what the disk backups of ``name`` saw: every checkpoint of the product's, or only
        ``checkpoint`` (the others kept). Note NOTHING_CHANGED when there was nothing to forget."""
        self._unsupported("scrub a VM's backup checkpoints")

    def restore_disk_backup(self, chain: Path, new_name: str) -> Outcome:
        """Restore ``chain`` as VM ``new_name``, booted; a product that restores only a disk image says
        so with ``data`` {"disk": the image}, which the specification then boots itself."""
        self._unsupported("restore a disk backup")

    # -- data disks (hot-plugged into running VMs) ------------------------------------------
    def create_disk(self, name: str, size: int) -> Outcome:
        """A new, empty data disk ``name`` of ``size`` bytes."""
        self._unsupported("create a data disk")

    def attach_disk(self, name: str, vm: str) -> Outcome:
        """Attach disk ``name`` to ``vm`` while it runs. A disk that does not exist is refused
        (UNKNOWN_DISK, ``subject`` the disk); one attached to another VM is refused (BUSY, ``subject``
        the disk); already attached to ``vm``: done, note NOTHING_CHANGED."""
        self._unsupported("attach a data disk")

    def detach_disk(self, name: str) -> Outcome:
        """Detach disk ``name`` from the VM it is attached to, which keeps running."""
        self._unsupported("detach a data disk")

    def delete_disk(self, name: str) -> Outcome:
        """Delete disk ``name`` and its file; an attached disk is refused (BUSY, ``subject`` the disk)."""
        self._unsupported("delete a data disk")

    def list_disks(self) -> Outcome:
        """``data``: one dict per disk the product knows: {"name", "size" (bytes), "vm" (None: detached)}."""
        self._unsupported("list data disks")

    # -- VM snapshots --------------------------------------------------------------------
    def save_snapshot(self, name: str, tag: str) -> Outcome:
        self._unsupported("save a VM snapshot")

    def restore_snapshot(self, name: str, tag: str) -> Outcome:
        self._unsupported("restore a VM snapshot")

    # -- config and version --------------------------------------------------------------
    def example_config(self) -> Outcome:
        """Write the example config; an existing one is kept (done, note EXISTS)."""
        self._unsupported("write an example config")

    def check_config(self) -> Outcome:
        """Done when the product finds the config valid."""
        self._unsupported("check a config")

    def version_report(self) -> Outcome:
        """``data``: {"version": the product's, "python": the Python it runs on, "qemu": the first line of
        ``--version`` of the QEMU it drives, None when there is none}."""
        self._unsupported("report its version")

    # -- the fixture daemon ----------------------------------------------------------------
    def observe(self, fix: bool = False) -> Outcome:
        """One observer pass (with its safe fixes when ``fix``); ``data``: {"killed": [pids]}."""
        self._unsupported("run the observer")

    def install_service(self, socket: Path) -> Outcome:
        """Install the daemon as a systemd service answering on ``socket``."""
        self._unsupported("install the daemon as a service")

    def uninstall_service(self, socket: Path) -> Outcome:
        self._unsupported("uninstall the daemon service")

    def hold_lease(self, name: str, ttl: float, state_dir: Path | None = None, timeout: float = 120):
        """Another runner, in a process of its own, leasing VM ``name`` of the config and holding it:
        a ``testkit.RunnerProcess`` (its pid, lease id and the VM's SSH port)."""
        self._unsupported("hold a lease")

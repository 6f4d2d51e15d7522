"""The reference product: the ``vmfixtures`` CLI itself, judged like any other product.

Its argv, wording and exit codes are known here and nowhere else in the
specification (steps see only ``Outcome``s).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import yaml

from .. import __version__
from .base import (BAD_CONFIG, BROKEN_CHAIN, BUSY, CORRUPT, DONE, EXISTS, FAILED, MISMATCH, MISSING_ARTIFACT,
                   MISSING_SOURCE, MISSING_TOOL, NO_TUNNEL, NOT_RUNNING, NOT_WRITABLE, NOTHING_CHANGED, REFUSED,
                   UNKNOWN_AGENT, UNKNOWN_DISK, UNKNOWN_SNAPSHOT, UNKNOWN_VM, UNSUPPORTED, Outcome, Product)
from .base import MISSING_PATH, NO_SPACE, UNKNOWN_USER

# vmfixtures --help: exit codes, and what each means to the specification. 8 ("the guest or QEMU
# refused a request") has no one meaning: its kinds are told apart by the message below.
EXIT_REFUSALS = {2: BAD_CONFIG, 3: UNKNOWN_VM, 4: MISMATCH, 5: MISSING_TOOL, 6: NOT_WRITABLE, 9: NO_TUNNEL,
                 10: UNSUPPORTED, 11: BUSY, 12: NO_SPACE}
# Finer kinds, told apart by the message (the wording is this product's own): a regular expression
# on stderr (its ``subject`` group names what the refusal is about, ``holder`` a pid), the kind, and
# the exit codes the message counts under (None: any). The first that matches decides.
MESSAGE_REFUSALS = (
    (r"does not exist or is not a folder", MISSING_SOURCE, None),
    (r"is not writable", NOT_WRITABLE, None),
    (r"corrupt snapshot", CORRUPT, None),
    (r"Image is not in qcow2 format", CORRUPT, None),  # QEMU's own reason, relayed when a damaged disk will not boot
    (r"backup chain \S+ has a missing link", BROKEN_CHAIN, {1}),
    (r"no agent named '(?P<subject>[^']+)'", UNKNOWN_AGENT, {2}),
    (r"install artifact of agent '(?P<subject>[^']+)' is missing", MISSING_ARTIFACT, {2}),
    (r"VM '[^']+' has no snapshot '(?P<subject>[^']+)'", UNKNOWN_SNAPSHOT, {3}),
    (r"no VM named '(?P<subject>[^']+)'", UNKNOWN_VM, {3}),
    (r"no running VM matches '(?P<subject>[^']+)'", UNKNOWN_VM, {3}),
    (r"has no guest user '(?P<subject>[^']+)'", UNKNOWN_USER, {3}),
    (r"has no (?:folder|file) (?P<subject>/\S*?)(?: \(|$)", MISSING_PATH, {3}),
    (r"guest user '(?P<subject>[^']+)' may not", NOT_WRITABLE, {6}),
    (r"architecture (?P<subject>\S+) cannot run here", UNSUPPORTED, {10}),
    (r"no disk named '(?P<subject>[^']+)'", UNKNOWN_DISK, {3}),
    (r"disk '(?P<subject>[^']+)' is attached to VM '[^']+'", BUSY, {11}),
    (r"VM '(?P<subject>[^']+)' is not running", NOT_RUNNING, {8}),
    (r"unmounting (?P<subject>\S+) in VM '[^']+' failed", BUSY, {8}),
    (r"host port (?P<subject>\S+) is already in use by pid (?P<holder>\d+)", BUSY, {9}),
    (r"target: (?P<subject>/\S*) is already the target of ", BUSY, {2}),
    (r"guest path (?P<subject>/\S*) in VM '[^']+' is already in use", BUSY, {2}),
    (r"VM '(?P<subject>[^']+)' already exists with a different spec", MISMATCH, {4}),
    (r"already exists", EXISTS, None),
)
# A config error names file, line and field: "vmfixtures: error: FILE:LINE: FIELD: what is wrong".
CONFIG_ERROR = re.compile(r"vmfixtures: error: (?P<file>/[^:\n]+):(?:(?P<line>\d+):)? (?P<field>[A-Za-z_][\w.\[\]-]*):")
# A mismatch lists each differing field: "  cpus: existing 1, requested 2".
DIFFERENCE = re.compile(r"^\s*(?P<field>[a-z_]+): existing (?P<existing>.+?), requested (?P<requested>.+?)\s*$", re.MULTILINE)
# Remarks on a done command: (regex on stdout, note); ``subject`` names what was already there.
DONE_NOTES = ((r"nothing changed", NOTHING_CHANGED),
              (r"disk '(?P<subject>[^']+)' is (?:already attached to VM '[^']+'|not attached); nothing to do",
               NOTHING_CHANGED),
              (r"VM '(?P<subject>[^']+)' already exists \(\w+\) with the same spec; nothing to do", EXISTS),
              (r"(?P<subject>\S+) exists; left untouched", EXISTS))
SNAPSHOT_FORMAT = "%Y%m%dT%H%M%S.%f"  # backups/folders.py names snapshots by their start time


class Vmfixtures(Product):
    """Drives ``python -m vmfixtures`` in the scenario's project folder."""

    name = "vmfixtures"
    distribution = "vmfixtures"  # the installed package whose version it reports
    supports = frozenset({"backups", "disk-backups", "vm-snapshots", "lifecycle", "daemon", "mounts", "agents",
                          "forwarding", "connectivity", "observer", "cli", "disks",
                          "files", "networks", "security", "workflow"})

    snapshot_format = SNAPSHOT_FORMAT

    def __init__(self, project):
        self.project = project

    def version(self) -> str:
        return __version__

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "vmfixtures", "--quiet", *args]

    def run(self, action: str, *args: str, input: str | None = None, at: datetime | None = None,
            env: dict | None = None) -> Outcome:
        """Run one command (its clock at ``at``, when given) and classify what came back."""
        env = {**(env or {}), **({"PATH": self.search_path} if self.search_path else {})}
        r = self.project.run(self.at_time(self.argv(*args), at), input=input, env=env)
        return classify(action, ["vmfixtures", *args], r.exit_code, r.stdout, r.stderr)

    def on_config(self, action: str, *args: str) -> Outcome:
        """``run`` with the project's config (``-c``)."""
        return self.run(action, *args, "-c", str(self.project.config_path))

    def start(self, action: str, *args: str, env: dict | None = None):
        """A long-running command (``testkit.Background``), stopped with the scenario."""
        bg = self.project.spawn_with(self.argv(*args), env or {})
        bg.action = action
        return bg

    def ended(self, background, timeout: float = 60) -> Outcome:
        """Wait for a long-running command to exit and classify what it said."""
        r = background.finish(timeout=timeout)
        return classify(background.action or "", ["vmfixtures", *background.argv[4:]], r.exit_code, r.stdout,
                        r.stderr)

    # -- config ------------------------------------------------------------
    def render_config(self, model: dict) -> str:
        data: dict = {"vms": model.get("vms", {})}
        for section in ("mounts", "agents", "forwards"):
            if model.get(section):
                data[section] = model[section]
        return yaml.safe_dump(data, sort_keys=False)

    def installation_key(self) -> Path:
        """Where this product keeps its per-installation SSH private key (its README: the data folder)."""
        env = self.project._env()
        data = env.get("VMFIXTURES_DATA_DIR") or str(Path(env.get("XDG_DATA_HOME") or Path.home() / ".local/share")
                                                      / "vmfixtures")
        return Path(data) / "ssh" / "id_ed25519"

    # -- folder backups ----------------------------------------------------
    def backup_once(self, source: Path, dest: Path, at: datetime | None = None) -> Outcome:
        return self.run("backup-once", "backup-once", str(source), str(dest), at=at)

    def start_backup_once(self, source: Path, dest: Path):
        return self.project.spawn(self.argv("backup-once", str(source), str(dest)))

    def backup_repeated(self, source: Path, dest: Path, interval: float) -> subprocess.Popen:
        return self.project.spawn(self.argv("backup-repeated", str(source), str(dest), "--interval", f"{interval:g}"))

    def backup_repeated_mount(self, source: str) -> subprocess.Popen:
        return self.project.spawn(self.argv("backup-repeated-mount", source, "-c", str(self.project.config_path)))

    def backup_repeated_all(self) -> subprocess.Popen:
        return self.project.spawn(self.argv("backup-repeated-all", "-c", str(self.project.config_path)))

    def clean_tail(self, source: Path, dest: Path, keep: int) -> Outcome:
        return self.run("backup-clean tail", "backup-clean", str(dest), "tail", str(keep))

    def clean_thin(self, source: Path, dest: Path, keep: int) -> Outcome:
        return self.run("backup-clean thin", "backup-clean", str(dest), "thin", str(keep))

    # -- VM lifecycle --------------------------------------------------------
    def create_vm(self, name: str) -> Outcome:
        o = self.on_config("create", "vm", "create", name)
        if o.refused_for(UNSUPPORTED):  # "... qemu-system-aarch64 is not installed ..."
            o.data = {"missing": re.findall(r"(qemu-system-\S+) is not installed", o.stderr)}
        return o

    def create_all_vms(self) -> Outcome:
        return self.on_config("create all", "vm", "create", "--all")

    def start_vm(self, name: str) -> Outcome:
        return self.on_config("start", "vm", "start", name)

    def start_all_vms(self) -> Outcome:
        return self.on_config("start all", "vm", "start", "--all")

    def stop_vm(self, name: str, deadline: float | None = None) -> Outcome:
        extra = ("--timeout", f"{deadline:g}") if deadline is not None else ()
        return self.on_config("stop", "vm", "stop", name, *extra)

    def stop_all_vms(self) -> Outcome:
        return self.on_config("stop all", "vm", "stop", "--all")

    def restart_vm(self, name: str) -> Outcome:
        return self.on_config("restart", "vm", "restart", name)

    def restart_all_vms(self) -> Outcome:
        return self.on_config("restart all", "vm", "restart", "--all")

    def destroy_vm(self, name: str) -> Outcome:
        return self.on_config("destroy", "vm", "destroy", name)

    def destroy_all_vms(self) -> Outcome:
        return self.on_config("destroy all", "vm", "destroy", "--all")

    def list_vms(self) -> Outcome:
        o = self.run("list", "vm", "list", "--json")
        return _with_json(o)

    def network_info(self, name: str) -> Outcome:
        o = _with_json(self.run("vm info", "vm", "info", name, "--json"))
        if o.done:
            o.data = {"profile": o.data["profile"], "allow": o.data["allow"],
                      "addresses": [a["address"] for a in o.data["addresses"]]}
        return o

    def accelerator(self) -> Outcome:
        o = self.run("accel", "accel")
        m = re.match(r"(?P<name>\w+): (?P<reason>.*?)(?: \(probe boot [^)]*\))?\s*$", o.stdout.strip())
        if o.done and m:
            o.data = {"name": m["name"], "reason": m["reason"]}
        elif o.done:
            o.status = FAILED  # it did not say which accelerator
        return o

    # -- mounts --------------------------------------------------------------
    def mount(self, source: str) -> Outcome:
        return self.on_config("mount", "mount", source)

    def mount_all(self) -> Outcome:
        return self.on_config("mount all", "mount", "--all")

    def unmount(self, source: str) -> Outcome:
        return self.on_config("umount", "umount", source)

    def add_mount(self, source: str, target: str, vm: str) -> Outcome:
        return self.on_config("addmount", "addmount", source, target, "--vm", vm)

    def remove_mount(self, source: str) -> Outcome:
        return self.on_config("removemount", "removemount", source)

    # -- agents --------------------------------------------------------------
    def install_agent(self, name: str) -> Outcome:
        return self.on_config("install-agents", "install-agents", name)

    def install_all_agents(self) -> Outcome:
        return self.on_config("install-agents all", "install-agents", "--all-agents")

    def _run_argv(self, name: str, backups: bool = True, args: tuple[str, ...] = ()) -> list[str]:
        return ["run", name, *(() if backups else ("--disable-backups",)), "-c", str(self.project.config_path),
                *(("--", *args) if args else ())]

    def run_agent(self, name: str, backups: bool = True, args: tuple[str, ...] = ()) -> Outcome:
        argv = self._run_argv(name, backups, args)
        r = self.project.run(self.argv(*argv))
        return classify_run("run", ["vmfixtures", *argv], r.exit_code, r.stdout, r.stderr)

    def start_agent(self, name: str):
        return self.start("run", *self._run_argv(name))

    def agent_ended(self, run, timeout: float = 60) -> Outcome:
        r = run.finish(timeout=timeout)
        return classify_run("run", ["vmfixtures", *run.argv[4:]], r.exit_code, r.stdout, r.stderr)

    # -- connectivity ----------------------------------------------------------
    def ssh(self, name: str, command: str) -> Outcome:
        return self.run("ssh", "ssh", name, command)

    def shell(self, name: str, typed: str) -> Outcome:
        return self.run("shell", "shell", name, input=f"{typed.rstrip()}\nexit\n")

    def status(self) -> Outcome:
        o = _with_json(self.on_config("status", "status", "--json"))
        if o.done:
            o.data = {row["name"]: {"state": row["state"], "cpus": row["cpus"], "memory": row["memory"],
                                    "mounts": [{k: m[k] for k in ("source", "target", "mounted", "last_backup")}
                                               for m in row["mounts"]],
                                    "agents": [{"name": a["name"], "pids": a["pids"]} for a in row["agents"]]}
                      for row in o.data}
        return o

    # -- files and commands ------------------------------------------------------
    def copy_into(self, name: str, source: Path, target: str) -> Outcome:
        return self.run("cp into", "cp", str(source), f"{name}:{target}")

    def copy_out(self, name: str, source: str, target: Path) -> Outcome:
        return self.run("cp out", "cp", f"{name}:{source}", str(target))

    def start_copy_into(self, name: str, source: Path, target: str):
        return self.start("cp into", "cp", str(source), f"{name}:{target}")

    def start_copy_out(self, name: str, source: str, target: Path):
        return self.start("cp out", "cp", f"{name}:{source}", str(target))

    def copy_ended(self, copy, timeout: float = 600) -> Outcome:
        return self.ended(copy, timeout)

    def run_command(self, name: str, command: list[str], cwd: str | None = None, env: dict | None = None,
                    user: str | None = None) -> Outcome:
        args = ["vm", "exec", name, *(("--cwd", cwd) if cwd else ()), *(("--user", user) if user else ()),
                *(a for k, v in (env or {}).items() for a in ("--env", f"{k}={v}")), "--", *command]
        r = self.project.run(self.argv(*args))
        # `vm exec` exits with the command's own code; only "vmfixtures: error:" is its own refusal
        return classify_run("vm exec", ["vmfixtures", *args], r.exit_code, r.stdout, r.stderr)

    def start_command(self, name: str, command: list[str]):
        return self.start("vm exec", "vm", "exec", name, "--", *command)

    def command_ended(self, run, timeout: float = 120) -> Outcome:
        r = run.finish(timeout=timeout)
        return classify_run("vm exec", ["vmfixtures", *run.argv[4:]], r.exit_code, r.stdout, r.stderr)

    # -- the serial console ------------------------------------------------------------
    def start_console(self, name: str, into: Path):
        argv = self.argv("console", name)
        with open(into, "wb") as out:  # into a file, not through this process: the console may be large
            proc = subprocess.Popen(argv, cwd=self.project.folder, env=self.project._env(), stdout=out,
                                    stderr=subprocess.PIPE, text=True)
        return SimpleNamespace(proc=proc, argv=argv)

    def console_ended(self, run, timeout: float = 120) -> Outcome:
        _, err = run.proc.communicate(timeout=timeout)
        return classify("console", ["vmfixtures", *run.argv[4:]], run.proc.returncode, "", err)

    # -- port forwarding ---------------------------------------------------------
    def start_forwarding(self, timeout: float) -> Outcome:
        bg = self.start("portforward", "portforward", "-c", str(self.project.config_path))
        try:
            bg.wait_for_line("forwarding ", timeout=timeout)  # "forwarding N tunnel(s); Ctrl-C stops them"
        except AssertionError:
            if bg.proc.poll() is None:
                raise  # still running, yet never said its tunnels are up
            return self.ended(bg)  # it refused
        return Outcome("portforward", DONE, argv=["vmfixtures", *bg.argv[4:]], stdout="\n".join(bg.lines),
                       process=bg)

    def stop_forwarding(self, process) -> Outcome:
        process.signal(signal.SIGINT)
        return self.ended(process)

    # -- VM disk backups -----------------------------------------------------------
    disk_backup_tools = ("qemu-img",)

    def disk_backup(self, name: str, dest: Path, group_by: str | None = None, full: bool = False) -> Outcome:
        extra = (*(("--group-by", group_by) if group_by else ()), *(("--full",) if full else ()))
        return self.run("vm backup", "vm", "backup", name, str(dest), *extra)

    def disk_backups(self, dest: Path) -> Outcome:
        o = self.disk_backup_status(dest)
        if o.done:
            o.data = [{"chain": Path(c["chain"]), "vm": c["vm"],
                       "links": [{"kind": link["kind"], "file": Path(link["file"]), "at": link["at"]}
                                 for link in c["links"]]}
                      for c in o.data["chains"]]
        return o

    def disk_backup_status(self, dest: Path, human: bool = False) -> Outcome:
        if human:
            return self.run("vm backup-status", "vm", "backup-status", str(dest))
        o = _with_json(self.run("vm backup-status", "vm", "backup-status", str(dest), "--json"))
        if o.done:
            o.data = {"chains": o.data["chains"],
                      "vms": {vm: {"checkpoints": v["checkpoints"]} for vm, v in o.data["vms"].items()}}
        return o

    def prune_disk_backups(self, dest: Path, keep: int) -> Outcome:
        return self.run("vm backup-prune", "vm", "backup-prune", str(dest), "--keep", str(keep))

    def scrub_backup_bitmap(self, name: str, checkpoint: str | None = None) -> Outcome:
        o = self.run("vm backup-scrub", "vm", "backup-scrub", name,
                     *(("--checkpoint", checkpoint) if checkpoint else ()))
        if o.done and "deleted checkpoint" not in o.stdout:  # "no backup checkpoints; nothing to do"
            o.note = NOTHING_CHANGED
        return o

    def restore_disk_backup(self, chain: Path, new_name: str) -> Outcome:
        return self.on_config("vm restore-backup", "vm", "restore-backup", str(chain), new_name)

    # -- data disks ----------------------------------------------------------------
    def create_disk(self, name: str, size: int) -> Outcome:
        return self.run("disk create", "disk", "create", name, "--size", str(size))

    def attach_disk(self, name: str, vm: str) -> Outcome:
        return self.run("disk attach", "disk", "attach", name, "--vm", vm)

    def detach_disk(self, name: str) -> Outcome:
        return self.run("disk detach", "disk", "detach", name)

    def delete_disk(self, name: str) -> Outcome:
        return self.run("disk rm", "disk", "rm", name)

    def list_disks(self) -> Outcome:
        o = _with_json(self.run("disk ls", "disk", "ls", "--json"))
        if o.done:
            o.data = [{"name": d["name"], "size": d["size"], "vm": d["attached_to"]} for d in o.data]
        return o

    # -- VM snapshots ----------------------------------------------------------------
    def save_snapshot(self, name: str, tag: str) -> Outcome:
        return self.run("vm snapshot", "vm", "snapshot", name, tag)

    def restore_snapshot(self, name: str, tag: str) -> Outcome:
        return self.run("vm restore", "vm", "restore", name, tag)

    # -- config and version --------------------------------------------------------------
    def example_config(self) -> Outcome:
        return self.run("config example", "config", "example")

    def check_config(self) -> Outcome:
        o = self.on_config("config check", "config", "check")
        if o.done and ": ok: " not in o.stdout:
            o.status = FAILED  # exited 0 without saying the config is valid
        return o

    def version_report(self) -> Outcome:
        o = self.run("version", "version")
        # "vmfixtures 0.1.0 (python 3.11.7; QEMU emulator version 7.2.22 (Debian ...))"
        m = re.match(r"vmfixtures (?P<version>\S+) \(python (?P<python>\S+); (?P<qemu>.*)\)\s*$", o.stdout.strip())
        if o.done and m:
            o.data = {**m.groupdict(), "qemu": None if m["qemu"] == "QEMU not installed" else m["qemu"]}
        elif o.done:
            o.status = FAILED
        return o

    # -- the fixture daemon -----------------------------------------------------------------
    def observe(self, fix: bool = False) -> Outcome:
        o = self.run("observe", "observe", *(("--fix",) if fix else ()))
        o.data = {"killed": [int(p) for p in re.findall(r"killed orphan QEMU pid (\d+)", o.stdout)]}
        return o

    def install_service(self, socket: Path) -> Outcome:
        return self.run("daemon install", "daemon", "install", env={"VMFIXTURES_DAEMON_SOCKET": str(socket)})

    def uninstall_service(self, socket: Path) -> Outcome:
        return self.run("daemon uninstall", "daemon", "uninstall", env={"VMFIXTURES_DAEMON_SOCKET": str(socket)})

    def hold_lease(self, name: str, ttl: float, state_dir: Path | None = None, timeout: float = 120):
        from ..testkit import Background, RunnerProcess

        # a runner of its own: not this process's child in the product's eyes, in no lease of this scenario
        env = dict(os.environ, VMFIXTURES_STATE_DIR=str(state_dir or self.project.scope.dir),
                   VMFIXTURES_BACKEND=self.project.scope.backend)
        env.pop("VMFIXTURES_LEASE", None)
        args = ["lease", "hold", name, "-c", str(self.project.config_path), "--ttl", f"{ttl:g}"]
        proc = subprocess.Popen(self.argv(*args), cwd=self.project.folder, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            line = Background(proc, args).wait_for_line(f"{name}: ", timeout)[0]
        except AssertionError:
            proc.kill()
            raise
        # "worker: ssh 127.0.0.1:PORT (lease ID, from pool)"
        m = re.search(r"ssh 127\.0\.0\.1:(?P<port>\d+) \(lease (?P<lease>[^,)]+)", line)
        if not m:
            proc.kill()
            raise AssertionError(f"`vmfixtures {' '.join(args)}` said {line!r}, naming no lease and SSH port")
        return RunnerProcess(proc, m["lease"], int(m["port"]))


def _with_json(o: Outcome) -> Outcome:
    """``data`` from the JSON a done command printed (a done command printing no JSON failed)."""
    if o.done:
        try:
            o.data = json.loads(o.stdout)
        except ValueError:
            o.status = FAILED
    return o


def classify(action: str, argv: list[str], code: int, stdout: str, stderr: str) -> Outcome:
    """Exit code and message of a vmfixtures command -> Outcome."""
    if code == 0:
        o = Outcome(action, DONE, None, None, code, stdout, stderr, argv)
        for pattern, note in DONE_NOTES:
            if m := re.search(pattern, stdout):
                o.note, o.subject = note, m.groupdict().get("subject")
                break
        return o
    o = Outcome(action, FAILED, EXIT_REFUSALS.get(code), None, code, stdout, stderr, argv)
    for pattern, kind, codes in MESSAGE_REFUSALS:
        m = re.search(pattern, stderr)
        if m and (codes is None or code in codes):
            o.refusal, o.subject = kind, m.groupdict().get("subject")
            o.holder = int(m["holder"]) if m.groupdict().get("holder") else None
            break
    if o.refusal:
        o.status = REFUSED
    if code == 2 and (m := CONFIG_ERROR.search(stderr)):
        o.where = (m["file"], int(m["line"]) if m["line"] else None)
        o.config_field = m["field"]
    o.differences = {m["field"]: (m["existing"], m["requested"]) for m in DIFFERENCE.finditer(stderr)}
    return o


def classify_run(action: str, argv: list[str], code: int, stdout: str, stderr: str) -> Outcome:
    """``vmfixtures run`` exits with the agent's own exit code; only "vmfixtures: error:" is its own
    refusal or failure."""
    if "vmfixtures: error:" in stderr:
        return classify(action, argv, code or 1, stdout, stderr)
    return Outcome(action, DONE, None, None, code, stdout, stderr, argv, data={"exit_code": code})

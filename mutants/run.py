#!/usr/bin/env python3
"""Mutation runner: prove that the specification's checks can fail.

Each mutant is one small, realistic defect put into the reference product
(an exact ``find`` text replaced by ``replace`` in one file) together with
the behave selection (or, where only a test with its own VMs can see the
defect, the pytest tests) that claims to catch it. For each mutant the runner
copies the work tree to a fresh folder under /tmp, applies the defect to the
copy only, and runs that selection there with the copy first on PYTHONPATH
(so behave, the CLI the steps spawn and the fixture daemon all load the
mutated code) and with private state, data, socket and runtime folders.

Before the mutants, every selection runs once unmutated ("baseline"): a
selection that fails on its own says nothing about a mutant.

Results: caught (behave failed, with at least one failed scenario),
survived (every selected scenario passed), baseline failed, error (behave
failed without a failing scenario, or timed out), not run (everything
skipped). A table goes to stdout, details to reports/mutants.json.

Exit codes: 0 every mutant caught; 1 a mutant survived or a result is not
conclusive; 2 bad usage; 3 a mutant no longer applies to the sources.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
BEHAVE = REPO / ".venv" / "bin" / "behave"
PYTHON = REPO / ".venv" / "bin" / "python"
REPORT = REPO / "reports" / "mutants.json"
TOP_LEVEL_SKIP = {".git", ".venv", "reports", ".hypothesis", ".pytest_cache", ".ruff_cache", "mutants"}
# A run's own settings replace these; the others (mirror, accelerator, ...) pass through.
ENV_DROPPED = ("VMFIXTURES_LEASE", "VMFIXTURES_OWNER_PID", "VMFIXTURES_KEEP_DAEMON", "VMFIXTURES_DAEMON")
TERM_GRACE = 90.0  # behave turns SIGTERM into its after_all cleanup (daemon shutdown, leases ended)


class Refusal(Exception):
    """A one-line reason to stop before running anything (bad input, a mutant that no longer applies)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Selection:
    """Which checks run: feature files, optionally narrowed by -n name regexes; or pytest node ids
    (``tests``) for a defect only a test that controls its VMs' timing can see."""

    features: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    fresh_key: bool = False  # a new installation key (and so a private image cache) instead of a copy of ours
    tests: tuple[str, ...] = ()

    def argv(self, report: Path) -> list[str]:
        if self.tests:
            return [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", *self.tests,
                    f"--junitxml={report}"]
        return [str(BEHAVE), *self.features, *(a for n in self.names for a in ("-n", n)),
                "-f", "progress", "-o", "-", "-f", "json", "-o", str(report)]

    def results(self, report: Path) -> tuple[int, list[dict]]:
        """(passed, failing) from the run's report."""
        return _testcases(report) if self.tests else _scenarios(report)

    def label(self) -> str:
        text = " ".join(self.tests or self.features + tuple(f"-n {n!r}" for n in self.names))
        return text + (" [fresh key]" if self.fresh_key else "")


@dataclass(frozen=True)
class Mutant:
    """One defect: replace ``find`` (exactly ``count`` occurrences) by ``replace`` in ``file``."""

    name: str
    description: str
    file: str
    find: str
    replace: str
    selection: Selection
    count: int = 1

    def mutate(self, root: Path) -> None:
        """Apply the defect to the tree at ``root``; Refusal when it no longer applies."""
        path = root / self.file
        if not path.is_file():
            raise Refusal(f"mutant {self.name} no longer applies: {self.file} does not exist", 3)
        text = path.read_text()
        found = text.count(self.find)
        if found == 0:
            raise Refusal(f"mutant {self.name} no longer applies: text not found in {self.file}", 3)
        if found != self.count:
            raise Refusal(f"mutant {self.name} no longer applies: text found {found} times in {self.file}, "
                          f"expected {self.count}", 3)
        mutated = text.replace(self.find, self.replace)
        try:
            if path.suffix == ".py":  # a defect that does not even import is not realistic (other files: guest scripts)
                compile(mutated, str(path), "exec")
        except SyntaxError as exc:
            raise Refusal(f"mutant {self.name} does not compile: {self.file} line {exc.lineno}: {exc.msg}", 3)
        path.write_text(mutated)


def _sel(feature: str, *names: str, fresh_key: bool = False) -> Selection:
    return Selection((f"features/{feature}",), names, fresh_key)


def _tests(*node_ids: str) -> Selection:
    return Selection(tests=tuple(f"tests/{n}" for n in node_ids))


MUTANTS = [
    Mutant("backup-snapshots-unchanged",
           "the change check runs rsync with --verbose, so its output is never empty: a snapshot every time",
           "vmfixtures/backups/folders.py",
           '"--dry-run", "--itemize-changes",', '"--dry-run", "--itemize-changes", "--verbose",',
           _sel("backups.feature", "No new snapshot when nothing changed")),
    Mutant("backup-copies-unchanged",
           "--copy-dest instead of --link-dest: unchanged files are copied, not hard-linked",
           "vmfixtures/backups/folders.py",
           'args.append(f"--link-dest={previous.resolve()}")', 'args.append(f"--copy-dest={previous.resolve()}")',
           _sel("backups.feature", "Unchanged files are shared with the previous snapshot")),
    Mutant("tail-keeps-oldest",
           "backup-clean tail N keeps the oldest N snapshots instead of the newest",
           "vmfixtures/backups/retention.py",
           "return set(range(max(0, len(times) - n), len(times)))", "return set(range(min(n, len(times))))",
           _sel("backups.feature", "tail keeps the newest snapshots")),
    Mutant("sigterm-kills-backup-loop",
           "repeated backups handle SIGINT only: SIGTERM kills them mid-backup (exit -15, a partial may stay)",
           "vmfixtures/cli/backups.py",
           "    stop = threading.Event()\n    for sig in (signal.SIGINT, signal.SIGTERM):",
           "    stop = threading.Event()\n    for sig in (signal.SIGINT,):",
           _sel("backups.feature", "stop cleanly on SIGTERM")),
    Mutant("backup-writes-final-name",
           "rsync writes straight into the snapshot's final name: an interrupted copy looks like a snapshot",
           "vmfixtures/backups/folders.py",
           'partial = dest / f"{stamp}{PARTIAL_SUFFIX}"', "partial = dest / stamp",
           _sel("backups.feature", "A backup killed halfway")),
    Mutant("tunnel-not-restored",
           "an ssh tunnel killed by a signal is taken for a deliberate stop and never restored",
           "vmfixtures/forwarding.py",
           "                if not self._restore(t, killed=code < 0):",
           "                if code < 0 or not self._restore(t, killed=code < 0):",
           _sel("forwarding.feature", "A tunnel whose ssh process dies is restored")),
    Mutant("forward-binds-all-interfaces",
           "a bare forward port binds 0.0.0.0 instead of 127.0.0.1 (where spec.py picks the host address)",
           "vmfixtures/spec.py",
           '    addr, port = "127.0.0.1", value', '    addr, port = "0.0.0.0", value',
           _sel("forwarding.feature", "A web app running in the VM is opened from the host")),
    Mutant("addmount-saves-before-mounting",
           "addmount writes the entry into the config before mounting, so a failed mount leaves it there",
           "vmfixtures/cli/mounts.py",
           "    mounts.mount(new.source, new.target)\n    try:\n        save_config(config, data)\n"
           "    except BaseException:\n        mounts.umount(new.target)  # the file could not be written: undo the "
           "mount too\n        raise\n",
           "    save_config(config, data)\n    mounts.mount(new.source, new.target)\n",
           _sel("mounts.feature", "Adding a mount of a folder that does not exist is refused")),
    Mutant("agent-outside-mount",
           "the agent is started in the SSH login folder, not cd'd into the mounted project",
           "vmfixtures/agents/__init__.py",
           'command = f"cd {shlex.quote(mount.target)} && exec env {env}', 'command = f"exec env {env}',
           _sel("agent_runs.feature", "The agent starts in the mounted project folder")),
    Mutant("observer-trusts-run-file",
           "the observer takes a VM with a run.json for running, so a killed QEMU goes unnoticed",
           "vmfixtures/observer.py",
           '            if row["state"] in RUNNING_STATES and proc is None:',
           '            if row["state"] in RUNNING_STATES and driver.run_info(row["name"]) is None:',
           _sel("observer.feature", "A VM whose process died is reported")),
    Mutant("stop-never-forces",
           "stop waits for the power button's deadline but never forces the guest off: QEMU keeps running",
           "vmfixtures/backends/qemu.py",
           "            if not graceful:\n                self._force_off(name, proc)\n",
           "            if not graceful:\n                pass  # left to power off on its own\n",
           _sel("vm_lifecycle.feature", "A guest that ignores the power button is forced off")),
    # ensure_keypair repairs a loose mode on every call, so a key merely *created* 0644 heals itself at
    # the next command: the realistic defect that stays is the wrong mode constant in both places. It
    # needs a key this run creates (a copy of ours is 0600 already), hence a fresh key and image.
    Mutant("key-world-readable",
           "keys.py uses mode 0o644 for the private key, when creating it and when 'repairing' it",
           "vmfixtures/keys.py", "0o600", "0o644",
           _sel("connectivity.feature", "The operator runs a command in the VM over SSH", fresh_key=True), count=2),
    Mutant("pool-cold-boots",
           "the daemon asks the backend for 'memory-snapshot' (a typo), finds none and cold-boots every lease",
           "vmfixtures/daemon/service.py",
           "        if driver.supports(backends.base.MEMORY_SNAPSHOTS):",
           '        if driver.supports("memory-snapshot"):',
           _sel("fixture_daemon.feature", "A lease gives a running VM from the warm pool")),
    Mutant("umount-leaves-helpers",
           "umount drops the mount's record but never stops its ssh/sftp helpers (trusts them to exit)",
           "vmfixtures/mounts.py",
           "        self._stop_helpers(rec)\n        return rec\n",
           "        for suffix in (\".json\", \".log\"):\n"
           "            (self.folder / f\"{_key(rec.target)}{suffix}\").unlink(missing_ok=True)\n        return rec\n",
           _sel("mounts.feature", "Unmounting ends the host side of the mount")),
    Mutant("status-shows-config-resources",
           "status reports the cpus/memory/disk the config asks for instead of the VM's own",
           "vmfixtures/status.py",
           '        row = existing.get(name) or {"name": name, "state": "missing", "cpus": spec.cpus,\n'
           '                                     "memory": format_size(spec.memory), "disk": format_size(spec.disk),\n'
           '                                     "network": spec.network.profile}\n',
           '        row = {**(existing.get(name) or {"name": name, "state": "missing"}), "cpus": spec.cpus,\n'
           '               "memory": format_size(spec.memory), "disk": format_size(spec.disk),\n'
           '               "network": spec.network.profile}\n',
           _sel("connectivity.feature", "The status shows each VM with its mounts")),
    Mutant("cp-drops-mode",
           "cp into a VM leaves the copy with the guest's default mode instead of the source's",
           "vmfixtures/guest/files.py",
           "            await sftp.chmod(tmp, mode)\n", "            await sftp.chmod(tmp, 0o644)\n",
           _sel("files_and_commands.feature", "A file copied into the VM arrives unchanged")),
    Mutant("cp-copies-first-block",
           "cp into a VM is a hand-written loop that stops after its first read: files over 64 KiB arrive cut",
           "vmfixtures/guest/files.py",
           "            await sftp.put(str(src), tmp, block_size=BLOCK, max_requests=IN_FLIGHT)\n",
           "            async with sftp.open(tmp, \"wb\") as remote:\n"
           "                with open(src, \"rb\") as local:\n"
           "                    await remote.write(local.read(BLOCK))\n",
           _sel("files_and_commands.feature", "A file copied into the VM arrives unchanged")),
    Mutant("cp-reads-whole-file",
           "cp into a VM reads the whole file into memory and writes it in one go (content right, memory not)",
           "vmfixtures/guest/files.py",
           "            await sftp.put(str(src), tmp, block_size=BLOCK, max_requests=IN_FLIGHT)\n",
           "            async with sftp.open(tmp, \"wb\") as remote:\n"
           "                await remote.write(Path(src).read_bytes())\n",
           _sel("files_and_commands.feature", "A large file is streamed in and out")),
    Mutant("disk-detach-forgets-only",
           "detaching a disk from a running VM drops it from the records but never unplugs it",
           "vmfixtures/disks.py",
           "                    backend.detach_disk(vm, disk)\n", "                    pass\n",
           _sel("disks.feature", "A detached disk disappears from the guest")),
    Mutant("disk-attach-skips-device-add",
           "attaching a disk adds QEMU's block node but no device: recorded as attached, the guest never sees it",
           "vmfixtures/backends/qemu.py",
           "                _qmp_do(qmp, name, f\"attach disk '{disk.name}'\", \"device_add\", driver=\"virtio-blk-pci\",\n"
           "                        drive=disk.device_id, id=disk.device_id, bus=DATA_BUS, addr=f\"{disk.slot:#x}\")\n",
           "                pass\n",
           _sel("disks.feature", "A disk attached to a running VM appears in its guest")),
    Mutant("disk-rm-while-attached",
           "removing a disk does not ask whether a VM has it attached: the file goes from under the guest",
           "vmfixtures/disks.py",
           "            if holder:\n                raise InUse(", "            if False:\n                raise InUse(",
           _sel("disks.feature", "Deleting a disk that is attached is refused")),
    # -- the guest is untrusted (features/untrusted_guest.feature, hostile_guest.feature): one per rule,
    # each removing its protection
    Mutant("mount-server-sees-parent",
           "the SFTP server's sandbox binds the mounted folder's parent: a guest asking for it reads beside the mount",
           "vmfixtures/mounts.py",
           '["--bind", str(source), str(source), "--remount-ro"', '["--bind", str(source.parent), str(source.parent), "--remount-ro"',
           _sel("untrusted_guest.feature", "Asking for its parent folder")),
    Mutant("forward-drops-named-address",
           "a local forward passes only its port to ssh: a forward the config binds to 127.0.0.2 lands on localhost",
           "vmfixtures/forwarding.py",
           'flag = {"local": ["-L", f"{spec.host}:{spec.guest}"],', 'flag = {"local": ["-L", f"{spec.host.port}:{spec.guest}"],',
           _sel("untrusted_guest.feature", "Forwarded ports listen on the host's loopback only")),
    Mutant("socks-on-all-interfaces",
           "the SOCKS5 proxy is opened on every interface ('*:PORT') instead of the configured address",
           "vmfixtures/forwarding.py",
           '"socks5": ["-D", str(spec.host)]', '"socks5": ["-D", f"*:{spec.host.port}"]',
           _sel("untrusted_guest.feature", "Forwarded ports listen on the host's loopback only")),
    Mutant("console-read-whole",
           "`vmfixtures console` reads the whole log into memory before printing it",
           "vmfixtures/cli/guest.py",
           "        with open(log, \"rb\") as f:\n            shutil.copyfileobj(f, sys.stdout.buffer, 1024 * 1024)\n",
           "        sys.stdout.buffer.write(log.read_bytes().decode(errors=\"replace\").encode())\n",
           _sel("hostile_guest.feature", "floods its console")),
    Mutant("agent-reply-unbounded",
           "the guest agent client's reply cap is 64 times too large: an endless reply is buffered until the deadline",
           "vmfixtures/guest/agent.py",
           "                if scanned > MAX_REPLY:", "                if scanned > MAX_REPLY * 64:",
           _sel("hostile_guest.feature", "agent channel with endless bytes")),
    Mutant("overlay-larger-than-declared",
           "a VM's disk overlay is created twice the size the config declares: the guest writes past its disk",
           "vmfixtures/backends/qemu.py",
           'str(vm_dir / "disk.qcow2"), str(spec.disk)]', 'str(vm_dir / "disk.qcow2"), str(spec.disk * 2)]',
           _sel("hostile_guest.feature", "writes its disk to the end and beyond")),
    Mutant("vcpus-not-from-config",
           "QEMU is given two virtual CPUs whatever the config says: a busy guest takes more of the host",
           "vmfixtures/backends/qemu.py",
           '"-smp", str(spec.cpus),', '"-smp", "2",',
           _sel("hostile_guest.feature", "forks without end")),
    Mutant("lease-end-keeps-vm",
           "ending a lease marks its VMs destroyed but keeps them running: the next lease of the name gets them back",
           "vmfixtures/daemon/service.py",
           '                proof = driver.destroy(row["name"])', '                proof = None  # kept warm for the next lease',
           _sel("untrusted_guest.feature", "carries nothing from its previous tenant")),
    Mutant("pool-ignores-allow-list",
           "the pool hands an idle filtered VM to a lease that asked for other allowed ports: it runs with the "
           "firewall rules of the lease it was made for",
           "vmfixtures/daemon/pool.py",
           "    if isinstance(config, dict):\n        key += ",
           "    if False:\n        key += ",
           _tests("test_pool.py::test_one_snapshot_serves_every_allow_list_and_an_idle_vm_only_its_own")),
    Mutant("ssh-ready-before-listening",
           "the guest's boot script starts its SSH listener in the background and prints the ready line before "
           "port 22 listens",
           "vmfixtures/images/guest/vmf-boot",
           "vmf-ssh-socket </dev/null >/dev/null 2>/dev/ttyS0\n",
           "vmf-ssh-socket </dev/null >/dev/null 2>/dev/ttyS0 &\n",
           _tests("test_qemu_driver.py::test_ssh_answers_at_the_ready_line_and_each_connection_has_its_own_sshd")),
    Mutant("taken-port-fails-the-launch",
           "a VM whose SSH port was taken before passt bound it fails to start instead of starting on another port",
           "vmfixtures/backends/qemu.py",
           "PORT_ATTEMPTS = 3 ",
           "PORT_ATTEMPTS = 1 ",
           _tests("test_qemu_driver.py::test_a_taken_ssh_port_launches_the_vm_again_with_another")),
    Mutant("tunnel-up-by-any-listener",
           "port forwarding says a tunnel is up when anything answers on its host port, though its own ssh "
           "could not bind it (taken by another process since it was checked)",
           "vmfixtures/forwarding.py",
           "        if not listens(t.proc.pid, t.spec.host.port, ipv6=True):\n",
           "        if False:\n",
           _tests("test_forwarding.py::test_a_host_port_taken_after_its_check_is_not_reported_up")),
    Mutant("restore-keeps-random-state",
           "a restored VM's clone helper sets its clock and name but does not reseed its random generator: "
           "siblings share their generator's key",
           "vmfixtures/guest/freshen.pl",
           "    syswrite($rnd, substr($msg, 0, 64)) == 64 or return \"failed entropy\";\n"
           "    ioctl($rnd, 0x5207, 0) or return \"failed reseed\";  # RNDRESEEDCRNG: rekey the generator from the pool now\n",
           "",
           # Not the pool scenario: a pooled clone that sat idle is rekeyed by its own kernel on first use
           # (after about half the template's uptime), so only clones read right after the restore show it.
           _tests("test_templates.py::test_clones_map_the_template_ram_privately_and_differ")),
    Mutant("sftp-unconfined",
           "the SFTP server of a mount runs without bubblewrap: it sees the whole host",
           "vmfixtures/mounts.py",
           'return cmd + ["--bind", str(source), str(source), "--remount-ro", "/", "--unshare-all", "--clearenv",\n'
           '                      SFTP_SERVER, "-e", "-d", str(source)]',
           'return [SFTP_SERVER, "-e", "-d", str(source)]',
           _sel("untrusted_guest.feature", "finds no way to the daemon")),
    Mutant("gateway-maps-host-loopback",
           "passt maps the guest's gateway to the host as QEMU's slirp does: the host's loopback services open up",
           "vmfixtures/network.py",
           '"--foreground", "--quiet", "--no-map-gw", "--ipv4-only",', '"--foreground", "--quiet", "--ipv4-only",',
           _sel("untrusted_guest.feature", "loopback are out of the guest's reach on the default network")),
    Mutant("filtered-lets-everything-out",
           "the filtered network's last rules accept instead of reject: every port is open",
           "vmfixtures/network.py",
           "{who} meta l4proto tcp counter reject with tcp reset\n    {who} counter reject",
           "{who} meta l4proto tcp counter accept\n    {who} counter accept",
           _sel("networks.feature", "any other port never hears from the guest")),
    Mutant("isolated-not-restricted",
           "the isolated network is QEMU's user networking without restrict=on: the guest reaches everything",
           "vmfixtures/network.py",
           '"user,id=net0,restrict=on,', '"user,id=net0,restrict=off,',
           _sel("networks.feature", "An isolated VM reaches nothing")),
]


# -- one behave run ------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What one behave run of a selection (mutated or not) came to."""

    result: str  # passed | failed | error | not run
    seconds: float
    exit_code: int | None
    passed: int = 0
    failures: list[dict] = field(default_factory=list)  # scenario, step, error of each failing scenario
    leftovers_killed: list[str] = field(default_factory=list)
    tail: str = ""  # end of behave's output when the result is not conclusive
    folder: str | None = None  # kept with --keep


def _copy_tree(source: Path, dest: Path) -> None:
    """``source`` without VCS, venv, reports and caches."""
    def ignore(folder, names):
        skip = {n for n in names if n == "__pycache__"}
        if Path(folder) == source:
            skip |= (TOP_LEVEL_SKIP & set(names)) | {n for n in names if n.endswith(".egg-info")}
        return skip

    shutil.copytree(source, dest, ignore=ignore, symlinks=True)


def _installation_key_dir() -> Path:
    """The developer's key folder (as vmfixtures finds it), whose key the cached guest image trusts."""
    base = os.environ.get("VMFIXTURES_DATA_DIR") or Path(os.environ.get("XDG_DATA_HOME")
                                                         or Path.home() / ".local/share") / "vmfixtures"
    return Path(base) / "ssh"


def _environment(root: Path, copy: Path, fresh_key: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    data = root / "data"
    if fresh_key:
        data.mkdir()
        env["VMFIXTURES_CACHE_DIR"] = str(root / "cache")  # the new key's image is built there, removed with it
    else:
        # A copy of our key: the cached image (keyed by it) is reused, and a mutant cannot touch the real one.
        shutil.copytree(_installation_key_dir(), data / "ssh")
    (root / "runtime").mkdir(mode=0o700)
    env.update(PYTHONPATH=str(copy), VMFIXTURES_STATE_DIR=str(root / "state"), VMFIXTURES_DATA_DIR=str(data),
               VMFIXTURES_DAEMON_SOCKET=str(root / "d.sock"),
               XDG_RUNTIME_DIR=str(root / "runtime"))  # VM socket folders live here, not in the shared /tmp/vmfx-<uid>
    return env


def _check_isolation(copy: Path, env: dict, cwd: Path) -> str:
    """Prove the copy wins over the editable install, from a folder other than the copy (as the CLI runs)."""
    r = subprocess.run([str(PYTHON), "-c", "import vmfixtures; print(vmfixtures.__file__)"], cwd=cwd, env=env,
                       capture_output=True, text=True)
    where = r.stdout.strip()
    if r.returncode != 0 or not where.startswith(str(copy) + "/"):
        raise Refusal(f"isolation broken: vmfixtures loads from {where or r.stderr.strip()[-200:]!r}, "
                      f"not from the copy {copy}", 1)
    return where


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _leftovers(root: Path, copy: Path) -> list[psutil.Process]:
    """Processes of this run still alive: working under ``root``, started with the copy on PYTHONPATH, or
    a QEMU of ours (``guest=vmfx-``) holding a file under ``root``."""
    here, found = str(root.resolve()), []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            if _under(proc.cwd(), here) or proc.environ().get("PYTHONPATH") == str(copy):
                found.append(proc)
            elif any(a.startswith("guest=vmfx-") for a in proc.info["cmdline"] or []) and \
                    any(_under(f.path, here) for f in proc.open_files()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _reap(root: Path, copy: Path) -> list[str]:
    """SIGKILL what the run left alive (a daemon may start VMs while it dies: look again)."""
    killed = []
    for _ in range(3):
        procs = _leftovers(root, copy)
        if not procs:
            break
        for proc in procs:
            try:
                killed.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
    return killed


def _remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():  # a scenario killed mid-way may leave its read-only (chattr +i) backup folder behind
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _scenarios(report: Path) -> tuple[int, list[dict]]:
    """(passed, failing) scenarios from behave's JSON report; failing ones with their first bad step."""
    try:
        features = json.loads(report.read_text())
    except (OSError, ValueError):
        return 0, []
    passed, failing = 0, []
    for feature in features:
        for element in feature.get("elements", []):
            if element.get("type") == "background":
                continue
            status = element.get("status")
            if status == "passed":
                passed += 1
            elif status not in ("skipped", "untested", None):
                step = next((s for s in element.get("steps", [])
                             if s.get("result", {}).get("status") not in ("passed", "skipped", None)), {})
                error = step.get("result", {}).get("error_message") or ""
                error = error if isinstance(error, str) else "\n".join(error)
                failing.append({"scenario": element.get("name", "").strip(),
                                "step": f"{step.get('keyword', '')} {step.get('name', '')}".strip(),
                                "error": _headline(error)})
    return passed, failing


def _testcases(report: Path) -> tuple[int, list[dict]]:
    """(passed, failing) tests from pytest's JUnit XML report."""
    try:
        cases = ET.parse(report).getroot().iter("testcase")
    except (OSError, ET.ParseError):
        return 0, []
    passed, failing = 0, []
    for case in cases:
        bad = case.find("failure")
        bad = case.find("error") if bad is None else bad
        if bad is not None:
            failing.append({"scenario": f"{case.get('classname')}::{case.get('name')}", "step": "",
                            "error": _headline(bad.get("message") or bad.text or "")})
        elif case.find("skipped") is None:
            passed += 1
    return passed, failing


def _headline(error: str) -> str:
    """An assertion's first line, or the exception at the end of a traceback."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return (lines[-1] if lines[0].startswith("Traceback") else lines[0])[:300]


def _tail(*files: Path, lines: int = 25) -> str:
    text = "".join(f.read_text(errors="replace") for f in files if f.is_file())
    return "\n".join(text.strip().splitlines()[-lines:])


def run_selection(sources: Path, selection: Selection, mutant: Mutant | None, timeout: float, keep: bool,
                  announce_isolation: bool = False) -> RunResult:
    """Run ``selection`` in a fresh copy of ``sources`` (with ``mutant`` applied, if any)."""
    root = Path(tempfile.mkdtemp(prefix="vmfx-mut-", dir="/tmp"))
    copy = root / "repo"
    start = time.monotonic()
    proc = None
    killed: list[str] = []  # filled by the finally block, after the result exists
    try:
        _copy_tree(sources, copy)
        if mutant:
            mutant.mutate(copy)
        env = _environment(root, copy, selection.fresh_key)
        (root / "state").mkdir()
        where = _check_isolation(copy, env, root / "state")
        if announce_isolation:
            print(f"isolation: vmfixtures loads from {where}", flush=True)
        out, err, report = root / "run.out", root / "run.err", root / "report"
        argv = selection.argv(report)
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(argv, cwd=copy, env=env, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                    start_new_session=True)  # its own group: a timeout stops all of it
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
                _stop_group(proc)
        passed, failing = selection.results(report)
        if code is None:
            result = "error"
        elif code != 0:
            result = "failed" if failing else "error"
        else:
            result = "passed" if passed else "not run"
        tail = "" if result in ("passed", "failed") else _tail(out, err)
        if code is None:
            tail = f"timed out after {timeout:.0f}s\n{tail}"
        return RunResult(result, round(time.monotonic() - start, 1), code, passed, failing, killed, tail,
                         str(root) if keep else None)
    finally:
        if proc is not None and proc.poll() is None:  # interrupted (Ctrl-C): let behave clean up first
            _stop_group(proc)
        killed.extend(_reap(root, copy))
        if killed:
            print(f"  killed {len(killed)} leftover process(es) of the run in {root}", flush=True)
        if not keep:
            _remove(root)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM behave's process group (behave runs its cleanup), SIGKILL it after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(TERM_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# -- the whole job -------------------------------------------------------------------------------
def _chosen(only: str | None) -> list[Mutant]:
    if not only:
        return MUTANTS
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise Refusal(f"unknown mutant(s) {', '.join(unknown)} (see --list)", 2)
    return [known[n] for n in names]


def _preflight(mutants: list[Mutant], sources: Path) -> None:
    """Every mutant must apply to ``sources`` before the VM runs start."""
    if not BEHAVE.is_file():
        raise Refusal(f"{BEHAVE} not found: set up the virtual environment first (./bootstrap spec)", 2)
    if any(not m.selection.fresh_key for m in mutants) and not (_installation_key_dir() / "id_ed25519").is_file():
        raise Refusal(f"no installation key in {_installation_key_dir()}: run the spec once (./bootstrap spec) "
                      "so the key and its guest image exist", 2)
    for m in mutants:
        problem = _problem(m, sources)
        if problem:
            raise Refusal(problem, 3)


def _problem(m: Mutant, sources: Path = REPO) -> str | None:
    """Why ``m`` does not apply to ``sources`` (None when it does)."""
    with tempfile.TemporaryDirectory(prefix="vmfx-mut-check-") as tmp:
        target = Path(tmp) / m.file
        target.parent.mkdir(parents=True)
        if (sources / m.file).is_file():
            shutil.copy2(sources / m.file, target)
        try:
            m.mutate(Path(tmp))
        except Refusal as exc:
            return str(exc)
    return None


def _first_failure(r: RunResult) -> str:
    return r.failures[0]["scenario"] if r.failures else ""


def _print_table(rows: list[dict]) -> None:
    headers = ("mutant", "covering selection", "result", "seconds", "first failing scenario")
    table = [(r["name"], r["selection"], r["result"], f"{r['seconds']:.0f}", r["first_failure"]) for r in rows]
    widths = [min(60, max(len(h), *(len(str(row[i])) for row in table))) for i, h in enumerate(headers)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print()
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for row in table:
        print(line.format(*(str(c)[:w] if i < len(widths) - 1 else str(c) for i, (c, w) in enumerate(zip(row, widths)))))


def _list(mutants: list[Mutant]) -> int:
    problems = 0
    for m in mutants:
        problem = _problem(m)
        problems += bool(problem)
        print(f"{m.name}\n    {m.description}\n    file: {m.file}\n    selection: {m.selection.label()}"
              f"\n    applies: {'NO: ' + problem if problem else 'yes'}")
    return 3 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """Parse options, run baselines then mutants, print the table, write reports/mutants.json."""
    parser = argparse.ArgumentParser(description="Prove the specification's checks can fail: run each mutant's "
                                                 "covering scenarios against a mutated copy of the product.")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and their covering selections")
    parser.add_argument("--keep", action="store_true", help="keep each run's temporary folder (for debugging)")
    parser.add_argument("--timeout", type=float, default=900, metavar="SECONDS",
                        help="per behave run (default 900)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        raise Refusal(f"--timeout {args.timeout:g}: must be a positive number of seconds", 2)
    mutants = _chosen(args.only)
    if args.list:
        return _list(mutants)
    # Others edit the work tree meanwhile: one snapshot of it serves the baselines and every mutant,
    # so a mutant is always judged against the very sources its baseline passed on.
    sources = Path(tempfile.mkdtemp(prefix="vmfx-mut-src-", dir="/tmp")) / "repo"
    try:
        _copy_tree(REPO, sources)
        _preflight(mutants, sources)
        return _run_all(mutants, sources, args)
    finally:
        shutil.rmtree(sources.parent, ignore_errors=True)


def _run_all(mutants: list[Mutant], sources: Path, args) -> int:
    """Baselines, then mutants, on copies of ``sources``; the table and the JSON report. Returns the exit code."""
    started = datetime.now().isoformat(timespec="seconds")
    baselines: dict[Selection, RunResult] = {}
    for i, sel in enumerate(dict.fromkeys(m.selection for m in mutants)):
        print(f"baseline {sel.label()} ...", flush=True)
        baselines[sel] = run_selection(sources, sel, None, args.timeout, args.keep, announce_isolation=(i == 0))
        print(f"  {baselines[sel].result} in {baselines[sel].seconds:.0f}s", flush=True)

    rows = []
    for m in mutants:
        base = baselines[m.selection]
        if base.result != "passed":
            r, result = RunResult("skipped", 0.0, None), "baseline failed"
        else:
            print(f"mutant {m.name}: {m.selection.label()} ...", flush=True)
            r = run_selection(sources, m.selection, m, args.timeout, args.keep)
            result = {"failed": "caught", "passed": "survived"}.get(r.result, r.result)
            print(f"  {result} in {r.seconds:.0f}s" + (f": {_first_failure(r)}" if r.failures else ""), flush=True)
        rows.append({"name": m.name, "description": m.description, "file": m.file,
                     "selection": m.selection.label(), "result": result, "seconds": r.seconds,
                     "first_failure": _first_failure(r), "failures": r.failures, "exit_code": r.exit_code,
                     "leftovers_killed": r.leftovers_killed, "output_tail": r.tail, "kept": r.folder})

    _print_table(rows)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps({
        "started": started, "finished": datetime.now().isoformat(timespec="seconds"), "repo": str(REPO),
        "baselines": [{"selection": s.label(), "result": r.result, "seconds": r.seconds, "exit_code": r.exit_code,
                       "failures": r.failures, "leftovers_killed": r.leftovers_killed, "output_tail": r.tail,
                       "kept": r.folder}
                      for s, r in baselines.items()],
        "mutants": rows}, indent=2) + "\n")
    print(f"\nwritten {REPORT}")
    counts = {k: sum(1 for r in rows if r["result"] == k) for k in dict.fromkeys(r["result"] for r in rows)}
    print(", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0 if all(r["result"] == "caught" for r in rows) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Refusal as exc:
        print(f"mutants: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        print("mutants: interrupted (the current run's processes were stopped)", file=sys.stderr)
        sys.exit(130)

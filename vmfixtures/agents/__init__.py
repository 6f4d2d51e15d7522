"""Agents in VMs: installed from host artifacts (the guest has no internet), run in a mounted project.

An agent definition (``agents:`` in the config) names its install artifact
(a wheel, an npm tarball or a script), its command and its environment.
``run`` starts it inside the VM with the mount's guest path as working folder;
with backups on (the default) the mounted folder is snapshotted before the
agent starts, every ``interval`` seconds while it runs, and once after it exits.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .. import paths
from ..backups.folders import BackupLoop, BackupResult, backup_once
from ..errors import ConfigError, GuestError, MissingDependency, VmfError
from ..guest.result import ExecResult
from ..spec import AgentSpec, Config, MountSpec

GUEST_AGENT_DIR = "/var/lib/vmfixtures/agents"
# pip takes ~4.5 s per wheel under TCG; a pure-Python wheel is unpacked by this stdlib script instead
WHEEL_INSTALLER = resources.files("vmfixtures.guest").joinpath("wheel_install.py").read_text()
WHEEL_INSTALLER_REFUSED = 3  # its exit code for a wheel it does not lay out itself


def reference_wheel() -> Path:
    """The reference agent `scribe` as a wheel, built once with pip and cached."""
    src = Path(str(resources.files("vmfixtures.agents").joinpath("reference")))
    digest = hashlib.sha256()
    for f in sorted(src.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            digest.update(f.relative_to(src).as_posix().encode() + f.read_bytes())
    out = paths.cache_dir() / "agents" / digest.hexdigest()[:12]
    wheels = sorted(out.glob("*.whl"))
    if wheels:
        return wheels[0]
    with tempfile.TemporaryDirectory() as tmp:  # build from a copy: setuptools writes build/ and egg-info
        shutil.copytree(src, Path(tmp) / "src", ignore=shutil.ignore_patterns("__pycache__"))
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "-w", str(Path(tmp) / "dist"), str(Path(tmp) / "src")], capture_output=True, text=True)
        if r.returncode != 0:
            raise VmfError(f"building the reference agent wheel failed: {r.stderr.strip()[-400:]}")
        out.mkdir(parents=True, exist_ok=True)
        for whl in (Path(tmp) / "dist").glob("*.whl"):
            shutil.copy2(whl, out / whl.name)
    return sorted(out.glob("*.whl"))[0]


def command_name(agent: AgentSpec) -> str:
    return shlex.split(agent.run)[0]


def install(machine, agent: AgentSpec, timeout: float = 600) -> str:
    """Copy the agent's artifact into the guest and install it; returns what was installed."""
    if not agent.artifact.is_file():
        raise ConfigError(f"install artifact of agent '{agent.name}' is missing: {agent.artifact}")
    data = agent.artifact.read_bytes()
    guest_file = f"{GUEST_AGENT_DIR}/{agent.artifact.name}"
    machine.succeed(["mkdir", "-p", GUEST_AGENT_DIR])
    machine.write_file(guest_file, data)
    if agent.kind == "wheel":
        fast = machine.execute(["python3", "-I", "-c", WHEEL_INSTALLER, guest_file], timeout=timeout)
        if fast.exit_code != WHEEL_INSTALLER_REFUSED:  # installed, or failed for a reason pip would share
            argv = None
            r = fast
        else:  # a wheel the stdlib installer does not lay out (platform, headers, data): pip does
            argv = ["python3", "-m", "pip", "install", "--no-index", "--no-deps", "--force-reinstall",
                    "--break-system-packages", "--disable-pip-version-check", "--quiet", guest_file]
    elif agent.kind == "script":
        argv = ["install", "-m", "0755", guest_file, f"/usr/local/bin/{command_name(agent)}"]
    else:  # npm
        if not machine.execute("command -v npm").ok:
            raise MissingDependency(f"agent '{agent.name}' is an npm package, but the guest image has no npm")
        argv = ["npm", "install", "--global", "--offline", guest_file]
    if argv is not None:
        r = machine.execute(argv, timeout=timeout)
    if not r.ok:
        raise GuestError(f"installing agent '{agent.name}' in VM '{machine.name}' failed: {r.describe()}")
    if not machine.execute(f"command -v {shlex.quote(command_name(agent))}").ok:
        raise GuestError(f"agent '{agent.name}' installed, but its command '{command_name(agent)}' is not on PATH")
    return f"{agent.name} ({agent.kind} {agent.artifact.name}, sha256 {hashlib.sha256(data).hexdigest()[:12]})"


def backup_dest(config: Config, mount: MountSpec) -> Path:
    return mount.backup or config.folder / "backups" / mount.source.name


@dataclass
class RunReport:
    """The agent's result and what the backup loop did around it."""

    result: ExecResult
    initial: BackupResult | None = None
    during: list[BackupResult] = field(default_factory=list)
    final: BackupResult | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def snapshots(self) -> list[Path]:
        return [r.snapshot for r in [self.initial, *self.during, self.final] if r and r.snapshot]


def run(machine, agent: AgentSpec, mount: MountSpec, backups: Path | None, args: list[str] = (),
        timeout: float = 3600, on_backup=None) -> RunReport:
    """Run ``agent`` in ``mount``'s guest folder; snapshot the folder around it unless ``backups`` is None.

    ``on_backup`` sees each result of the backup loop while the agent works."""
    if not machine.execute(f"command -v {shlex.quote(command_name(agent))}").ok:
        raise ConfigError(f"agent '{agent.name}' is not installed in VM '{machine.name}' "
                          f"(run `vmfixtures install-agents {agent.name}`)")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in agent.env.items())
    command = f"cd {shlex.quote(mount.target)} && exec env {env} {agent.run} {shlex.join(args)}".strip()
    loop = None
    report_initial = None
    if backups is not None:
        report_initial = backup_once(mount.source, backups)  # before the agent touches anything
        loop = BackupLoop(mount.source, backups, mount.interval, on_result=on_backup).start()
    try:
        result = machine.ssh.run(command, timeout=timeout)
    finally:
        if loop:
            loop.stop()
    report = RunReport(result, report_initial)
    if loop:
        report.during = loop.results
        report.final = backup_once(mount.source, backups)
        results = [r for r in (report_initial, *loop.results, report.final) if r]
        report.warnings = [w for r in results for w in r.warnings] + loop.errors
    return report

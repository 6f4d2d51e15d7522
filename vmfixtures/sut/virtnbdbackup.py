"""virtnbdbackup (Debian package, 1.9.15): the incremental backup tool for libvirt VMs that VMSnap
(seed 003) drives, judged on the disk-backup features.

``virtnbdbackup -d DOMAIN -l full|inc|auto -o DIR`` backs up a running domain's
disks through libvirt's pull-mode backup (an NBD export and a checkpoint
``virtnbdbackup.N`` per backup) into a folder: one folder is one chain
(``vda.full.data``, ``vda.inc.virtnbdbackup.N.data``, the domain XML, its
kernel and initrd, ``checkpoints/``). ``virtnbdrestore -i DIR -o OUT`` rebuilds
the disk image; it does not start a VM, so the specification boots the image
itself. It has no grouping by period, no pruning, no checkpoint scrubbing, no
status report and takes one domain per run: those actions are ``Unsupported``
and their scenarios skip with that reason. Facts from its ``--help``, its
source (/usr/lib/python3/dist-packages/libvirtnbdbackup) and runs here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from ..errors import MissingDependency
from .base import (
    BROKEN_CHAIN,
    DONE,
    FAILED,
    NO_SPACE,
    REFUSED,
    UNKNOWN_VM,
    Outcome,
    Product,
)

# (regular expression on its log output, refusal kind); ``subject`` names what the refusal is about.
REFUSALS = ((r"Domain not found: no domain with matching name '(?P<subject>[^']+)'", UNKNOWN_VM),
            (r"No space left on device", NO_SPACE),
            (r"Unable to locate base full or copy backup", BROKEN_CHAIN))
LINK = re.compile(r"^(?P<disk>\w+)\.(?:(?P<full>full|copy)|inc\.virtnbdbackup\.(?P<n>\d+))\.data$")
CHAIN_PREFIX = "chain-"  # the adapter's folder per chain: virtnbdbackup writes one chain per output folder


class Virtnbdbackup(Product):
    """Drives ``virtnbdbackup`` and ``virtnbdrestore`` against the run's libvirt domains."""

    name = "virtnbdbackup"
    supports = frozenset({"disk-backups"})
    # a live backup streams over NBD from libvirt; qemu-img/qemu-nbd are only used offline or with -q
    disk_backup_tools = ()

    def __init__(self, project, command: str | None = None):
        self.project = project
        self.command = command or "virtnbdbackup"
        self.restore_command = str(Path(shutil.which(self.command) or self.command).with_name("virtnbdrestore"))
        if not shutil.which(self.command):
            raise MissingDependency(f"{self.command} not found: install the Debian package 'virtnbdbackup' "
                                    "(`./bootstrap test` does)")

    def lacks(self, capability):
        reason = super().lacks(capability)
        if reason:
            return f"{reason}: it backs up and restores libvirt VMs' disks, nothing else"
        if getattr(self.project.scope, "backend", None) != "libvirt":
            return f"{self.name} backs up libvirt domains; this run's VMs are on {self.project.scope.backend}"
        return None

    def version(self) -> str:
        r = subprocess.run([self.command, "-V"], check=False, capture_output=True, text=True)
        return (r.stdout.strip() or r.stderr.strip() or "unknown").splitlines()[-1]

    def render_config(self, model: dict) -> str:
        """virtnbdbackup has no config: the project's VMs are the specification's own (our format)."""
        return yaml.safe_dump({"vms": model.get("vms", {})}, sort_keys=False)

    # -- names: the operator's VM <-> its libvirt domain -------------------------------------
    def _domain(self, vm: str) -> str:
        """The libvirt domain running VM ``vm`` (the fixture's record); an unknown VM goes as it is."""
        try:
            return json.loads((Path(self.project.scope.storage) / vm / "vm.json").read_text())["domain"]
        except (OSError, ValueError, KeyError):
            return vm

    def _vm(self, domain: str) -> str:
        m = re.fullmatch(r"vmfx-(?P<vm>.+)-[0-9a-f]{8}", domain)
        return m["vm"] if m and self._domain(m["vm"]) == domain else domain

    def _run(self, action: str, argv: list[str]) -> Outcome:
        env = {"PATH": self.search_path} if self.search_path else None
        r = self.project.run(argv, env=env)
        o = classify(action, argv, r.exit_code, r.stdout, r.stderr)
        if o.subject:
            o.subject = self._vm(o.subject)
        return o

    # -- disk backups ----------------------------------------------------------------------
    def disk_backup(self, name: str, dest: Path, group_by: str | None = None, full: bool = False) -> Outcome:
        if any(c in name for c in "*?["):
            self._unsupported("back up several VMs by a name pattern (it takes one domain, -d)")
        if group_by:
            self._unsupported("group backups by period (VMSnap does that around it)")
        folder = Path(dest) / name
        chains = sorted((c for c in folder.glob(f"{CHAIN_PREFIX}*") if c.name[len(CHAIN_PREFIX):].isdigit()),
                        key=lambda c: int(c.name[len(CHAIN_PREFIX):]))
        if full or not chains:
            chain, level = folder / f"{CHAIN_PREFIX}{len(chains) + 1}", "full"
        else:
            chain, level = chains[-1], "auto"  # full into an empty folder, else incremental
        chain.parent.mkdir(parents=True, exist_ok=True)
        return self._run("backup", [self.command, "-d", self._domain(name), "-l", level, "-o", str(chain), "-n"])

    def disk_backups(self, dest: Path) -> Outcome:
        """The chain folders in ``dest`` (``DEST/<vm>/chain-N``) with their data files as links."""
        found = []
        for chain in sorted(Path(dest).glob(f"*/{CHAIN_PREFIX}*")):
            links = []
            for f in chain.iterdir():
                m = LINK.match(f.name)
                if m:
                    links.append((int(m["n"] or 0), {"kind": "full" if m["full"] else "incremental", "file": f,
                                                      "at": f.stat().st_mtime}))
            if links:
                found.append({"chain": chain, "vm": chain.parent.name, "links": [l for _, l in sorted(links)]})
        found.sort(key=lambda c: c["links"][0]["at"])
        return Outcome("list backups", DONE, data=found, argv=["(folders in", str(dest), ")"])

    def restore_disk_backup(self, chain: Path, new_name: str) -> Outcome:
        """``virtnbdrestore`` rebuilds the disk image in a folder of the project; ``data`` names it."""
        out = self.project.folder / f"restored-{new_name}"
        o = self._run("restore", [self.restore_command, "-i", str(chain), "-o", str(out), "-n"])
        if o.done:
            images = [p for p in sorted(out.glob("*")) if p.is_file() and p.read_bytes()[:4] == b"QFI\xfb"] \
                if out.is_dir() else []
            if len(images) != 1:
                o.status = FAILED
                o.stderr += f"\n(the adapter found {len(images)} disk images in {out}, expected one)"
            else:
                o.data = {"disk": images[0]}
        return o


def classify(action: str, argv: list[str], code: int, stdout: str, stderr: str) -> Outcome:
    """Exit code and log lines -> Outcome. It logs errors at ERROR/CRITICAL and exits 1 for any failure."""
    text = stdout + stderr
    failed_words = re.search(r"\] (ERROR|CRITICAL) ", text)
    if code == 0 and not failed_words:
        return Outcome(action, DONE, None, None, code, stdout, stderr, argv)
    o = Outcome(action, FAILED, None, None, code, stdout, stderr, argv)
    if "Traceback (most recent call last)" in text:
        return o
    for pattern, kind in REFUSALS:
        if m := re.search(pattern, text):
            o.status, o.refusal, o.subject = REFUSED, kind, m.groupdict().get("subject")
            break
    return o

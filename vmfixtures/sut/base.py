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

from ..errors import Unsupported

# What an outcome can be: the operator's action was carried out, or refused for
# a stated reason (a refusal is the product working as intended), or it failed.
DONE, REFUSED, FAILED = "done", "refused", "failed"

# Kinds of refusal the specification talks about, whatever the product's wording.
UNKNOWN_VM, BAD_CONFIG, BUSY, MISSING_SOURCE, NOT_WRITABLE, CORRUPT, EXISTS, MISMATCH, MISSING_TOOL, \
    NOT_RUNNING, UNSUPPORTED = ("unknown-vm", "bad-config", "busy", "missing-source", "not-writable", "corrupt",
                                "exists", "mismatch", "missing-tool", "not-running", "unsupported")


@dataclass
class Outcome:
    """What became of one operator action."""

    action: str
    status: str                 # done | refused | failed
    refusal: str | None = None  # one of the kinds above, when refused
    note: str | None = None     # a product-independent remark, e.g. "nothing-changed"
    exit_code: int = 0
    stdout: str = ""
    stderr: str = ""
    argv: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status == DONE

    def describe(self) -> str:
        """For assertion messages: what ran and what it said."""
        what = f"{self.status}" + (f" ({self.refusal})" if self.refusal else "")
        return (f"`{' '.join(self.argv)}` -> {what}, exit {self.exit_code}\n"
                f"  stdout: {self.stdout.strip()[-600:]!r}\n  stderr: {self.stderr.strip()[-600:]!r}")


class Product(ABC):
    """A product the specification can judge. Each adapter says what it supports; a scenario
    about something else skips with ``lacks(capability)`` as its reason."""

    name: str
    #: capabilities (features' capability tags) this product offers
    supports: frozenset[str] = frozenset()

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

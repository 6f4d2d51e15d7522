"""Find the Debian mirror the host already uses, from its apt configuration."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ConfigError

APT_DIR = Path("/etc/apt")


def _deb822_entries(text: str):
    """Yield (uris, suites) for each ``Types: deb`` stanza of a .sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            if ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            yield fields.get("uris", "").split(), fields.get("suites", "").split()


def _one_line_entries(text: str):
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 3 and parts[0] == "deb":
            if parts[1].startswith("["):  # options such as [signed-by=...]
                while parts and not parts[1].endswith("]"):
                    parts.pop(1)
                parts.pop(1)
            if len(parts) >= 3:
                yield [parts[1]], [parts[2]]


def host_mirror(suite: str, apt_dir: Path | None = None) -> str | None:
    """The first host mirror serving ``suite`` (else any main archive), or None."""
    apt_dir = apt_dir or APT_DIR
    entries = []
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        entries += _deb822_entries(path.read_text(errors="replace"))
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            entries += _one_line_entries(path.read_text(errors="replace"))
    entries = [(uris, suites) for uris, suites in entries if uris]
    for uris, suites in entries:
        if suite in suites:
            return uris[0]
    for uris, suites in entries:  # a host on another release: reuse its main archive
        if not any("security" in s for s in suites):
            return uris[0]
    return None


def resolve_mirror(suite: str, explicit: str | None = None) -> str:
    """The option, else $VMFIXTURES_MIRROR, else the host's apt configuration."""
    mirror = explicit or os.environ.get("VMFIXTURES_MIRROR") or host_mirror(suite)
    if not mirror:
        raise ConfigError(
            f"no Debian mirror found for '{suite}' in {APT_DIR}/sources.list(.d); "
            "pass --mirror URL or set VMFIXTURES_MIRROR"
        )
    return mirror.rstrip("/")

"""The installation's SSH key pair: generated once, private half mode 0600."""

from __future__ import annotations

import os
from pathlib import Path

from . import paths


def key_path() -> Path:
    return paths.data_dir() / "ssh" / "id_ed25519"


def ensure_keypair() -> Path:
    """Return the private key path, creating the pair on first use."""
    private = key_path()
    paths.private_dir(private.parent, "the installation's SSH key")
    if private.exists():
        mode = private.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(private, 0o600)  # ssh refuses group/world-readable keys
        return private
    import asyncssh  # here: importing it costs every CLI call ~0.1 s, and the pair is made once

    key = asyncssh.generate_private_key("ssh-ed25519", comment="vmfixtures")
    tmp = private.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    private.with_suffix(".pub").write_bytes(key.export_public_key())
    os.replace(tmp, private)
    return private


def public_key() -> str:
    return ensure_keypair().with_suffix(".pub").read_text().strip()

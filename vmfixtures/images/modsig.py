"""Kernel module signatures, which the initramfs's modules go without.

A signed module ends with its signature, a 12-byte ``struct module_signature``
whose last field is the signature's length (big-endian), and a magic string
(scripts/sign-file.c, include/linux/module_signature.h). The kernel checks the
signature at every load; under TCG, with a CPU model that has no SHA
instructions, that cost ~0.2 s for the 14 modules of each boot here. Without
it the kernel loads them and marks itself tainted ('E'), unless signatures are
enforced (``module.sig_enforce``, lockdown), which our guests do not set.
"""

from __future__ import annotations

import struct

MAGIC = b"~Module signature appended~\n"
INFO_SIZE = 12  # struct module_signature


def strip_signature(module: bytes) -> bytes:
    """``module`` without its appended signature; an unsigned module unchanged."""
    if not module.endswith(MAGIC):
        return module
    end = len(module) - len(MAGIC)
    if end < INFO_SIZE:
        raise ValueError("module signature trailer is truncated")
    (sig_len,) = struct.unpack(">I", module[end - 4:end])
    start = end - INFO_SIZE - sig_len
    if start < 0:
        raise ValueError(f"module signature claims {sig_len} bytes, more than the file holds")
    return module[:start]

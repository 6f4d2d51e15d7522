"""Talking to a running guest: qemu-guest-agent, SSH, serial console."""

from .result import ExecResult

__all__ = ["ExecResult"]

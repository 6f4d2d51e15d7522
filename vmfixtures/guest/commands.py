"""Commands run in a guest as a given user, in a given folder, with extra environment variables.

qemu-guest-agent runs commands as root in its own folder and, given an
environment, replaces the whole of it (PATH included). So the command is
wrapped instead: ``runuser`` for another user, ``env`` to add variables on top
of what the user gets, and a shell that changes folder and then ``exec``s the
command (a command that does not exist exits 127, as in a shell). Whether the
user and the folder exist is asked first, so a wrong one is a refusal naming
it rather than a failed command.
"""

from __future__ import annotations

import re

from ..errors import ConfigError, GuestError, NotFound
from .result import ExecResult

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# $1: the folder ("" for none); the rest: the command
WRAPPER = 'if [ -n "$1" ]; then cd -- "$1" || exit 126; fi; shift; exec "$@"'
# $1: the user, $2: the folder ("" for none); prints the user's uid:gid, or what is missing
PREFLIGHT = ('entry=$(getent passwd "$1") || { echo no-user; exit 0; }; '
             '[ -z "$2" ] || [ -d "$2" ] || { echo no-folder; exit 0; }; '
             'echo "$entry" | cut -d: -f3,4')


def parse_env(items: list[str] | None) -> dict[str, str]:
    """``NAME=VALUE`` items (``--env``) as a dict; ConfigError naming the first bad one."""
    env: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not ENV_NAME.match(name):
            raise ConfigError(f"--env: {item!r} is not NAME=VALUE (NAME: letters, digits and '_', "
                              "not starting with a digit)")
        env[name] = value
    return env


def check_folder(cwd: str | None) -> str | None:
    if cwd is not None and not cwd.startswith("/"):
        raise ConfigError(f"--cwd: {cwd!r} must be an absolute guest path")
    return cwd


def command_argv(argv: list[str], user: str = "root", cwd: str | None = None,
                 env: dict[str, str] | None = None) -> list[str]:
    """The argv the guest agent runs for ``argv`` as ``user`` in ``cwd`` with ``env`` added."""
    if not argv:
        raise ConfigError("give the command to run after --")
    wrapped = ["/bin/sh", "-c", WRAPPER, "vmfixtures-exec", cwd or "", *argv]
    if env:
        wrapped = ["/usr/bin/env", *(f"{k}={v}" for k, v in env.items()), *wrapped]
    if user != "root":
        wrapped = ["/usr/sbin/runuser", "-u", user, "--", *wrapped]
    return wrapped


def account(machine, user: str, cwd: str | None = None) -> tuple[int, int]:
    """The uid and gid of guest ``user`` (NotFound naming it when the guest has no such user, or
    naming ``cwd`` when that folder does not exist)."""
    r = machine.execute(["/bin/sh", "-c", PREFLIGHT, "vmfixtures-check", user, cwd or ""], timeout=30)
    answer = r.stdout.strip()
    if not r.ok:
        raise GuestError(f"on {machine.name}: could not look up guest user {user!r}: {r.describe()}")
    if answer == "no-user":
        raise NotFound(f"VM '{machine.name}' has no guest user '{user}'")
    if answer == "no-folder":
        raise NotFound(f"VM '{machine.name}' has no folder {cwd} (the working folder asked for)")
    uid, _, gid = answer.partition(":")
    return int(uid), int(gid)


def run(machine, argv: list[str], user: str = "root", cwd: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60.0) -> ExecResult:
    """Run ``argv`` in the guest as ``user`` in ``cwd`` with ``env`` added; the result carries the
    command's own exit code, stdout and stderr."""
    check_folder(cwd)
    if user != "root" or cwd:
        account(machine, user, cwd)
    return machine.execute(command_argv(argv, user, cwd, env), timeout=timeout)

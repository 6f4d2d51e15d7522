"""Run the fixture daemon as a systemd service (`vmfixtures daemon install|uninstall`).

``install`` writes two files and hands them to systemd:

- ``systemd.env`` (in the data folder): the paths the installing shell uses
  (state, cache, data, daemon socket), resolved, so the service and the
  user's shell talk about the same ledger, images and socket whatever
  ``$XDG_RUNTIME_DIR`` the service gets;
- ``vmfixtures.service``: ``ExecStart=<this vmfixtures> daemon run``, reading
  that file (``EnvironmentFile=``), restarted on failure. ``KillMode=mixed``:
  SIGTERM reaches the daemon alone first, so it drains its pool and destroys
  what it owns; whatever is left of the cgroup is SIGKILLed after
  ``TimeoutStopSec``.

As root the unit is a system unit (/etc/systemd/system), otherwise a user
unit (~/.config/systemd/user, ``systemctl --user``). Then ``daemon-reload``
and ``enable --now``. ``uninstall`` is ``disable --now``, removing both files
and ``daemon-reload``. Files are written atomically; a failed ``systemctl``
leaves them in place and says what systemd answered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .. import paths
from ..errors import GuestError, MissingDependency
from ..files import write_atomically

UNIT = "vmfixtures.service"


def booted() -> bool:
    """True when systemd is the init system (the check sd_booted(3) documents)."""
    return Path("/run/systemd/system").is_dir()


def unit_dir() -> Path:
    if os.getuid() == 0:
        return Path("/etc/systemd/system")
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def env_file() -> Path:
    return paths.data_dir() / "systemd.env"


def environment() -> dict[str, str]:
    """The settings the service must share with the installing shell."""
    return {"VMFIXTURES_STATE_DIR": str(paths.state_dir().absolute()),
            "VMFIXTURES_CACHE_DIR": str(paths.cache_dir().absolute()),
            "VMFIXTURES_DATA_DIR": str(paths.data_dir().absolute()),
            "VMFIXTURES_DAEMON_SOCKET": str(paths.daemon_socket().absolute()),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}


def unit_text(executable: str, env_path: Path, args: list[str]) -> str:
    return f"""[Unit]
Description=vmfixtures fixture daemon (leases, warm VM pool, reaper, observer)
After=network.target

[Service]
Type=simple
EnvironmentFile={env_path}
ExecStart={executable} daemon run {' '.join(args)}
Restart=on-failure
RestartSec=2
KillMode=mixed
TimeoutStopSec=90

[Install]
WantedBy={'multi-user.target' if os.getuid() == 0 else 'default.target'}
""".replace(" \n", "\n")


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text, mode)


def _systemctl_cmd(*argv: str) -> list[str]:
    return ["systemctl", *([] if os.getuid() == 0 else ["--user"]), *argv]


def _systemctl(*argv: str) -> str:
    cmd = _systemctl_cmd(*argv)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise GuestError(f"`{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r.stdout


def _require_systemd() -> None:
    if shutil.which("systemctl") is None or not booted():
        raise MissingDependency("systemd is not the init system here (/run/systemd/system is missing); "
                                "start the daemon with `vmfixtures daemon start` instead")


def install(args: list[str], start: bool = True) -> list[Path]:
    """Write the env file and the unit; with ``start``, enable and start the service. Returns the files."""
    if start:
        _require_systemd()
    executable = shutil.which("vmfixtures") or f"{sys.executable} -m vmfixtures"
    env = environment()
    _write(env_file(), "".join(f"{k}={v}\n" for k, v in env.items()), 0o600)
    unit = unit_dir() / UNIT
    _write(unit, unit_text(executable, env_file(), args), 0o644)
    if start:
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", UNIT)
    return [env_file(), unit]


def uninstall(stop: bool = True) -> list[Path]:
    """Stop and disable the service, then remove its files. Returns the files removed."""
    if stop:
        _require_systemd()
        _systemctl("disable", "--now", UNIT)
    removed = [p for p in (unit_dir() / UNIT, env_file()) if p.exists()]
    for p in removed:
        p.unlink()
    if stop:
        _systemctl("daemon-reload")
    return removed


def status() -> str:
    """systemd's own view: `systemctl is-active` (active, inactive, failed, ...)."""
    _require_systemd()
    return subprocess.run(_systemctl_cmd("is-active", UNIT), capture_output=True, text=True).stdout.strip()

"""The systemd unit as written (systemd itself is exercised by features/daemon_service.feature where it runs)."""

import stat

import pytest

from vmfixtures.daemon import systemd
from vmfixtures.errors import MissingDependency


@pytest.fixture
def unit_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "unit_dir", lambda: tmp_path / "units")
    monkeypatch.setenv("VMFIXTURES_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VMFIXTURES_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VMFIXTURES_DAEMON_SOCKET", str(tmp_path / "d.sock"))
    return tmp_path / "units"


def test_install_writes_a_unit_that_runs_the_daemon_with_the_shells_paths(unit_dir, tmp_path):
    env_file, unit = systemd.install(["--idle", "1"], start=False)
    text = unit.read_text()
    assert unit == unit_dir / "vmfixtures.service"
    assert f"EnvironmentFile={env_file}" in text and "daemon run --idle 1" in text
    assert "KillMode=mixed" in text and "Restart=on-failure" in text
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["VMFIXTURES_STATE_DIR"] == str(tmp_path / "state")
    assert env["VMFIXTURES_DAEMON_SOCKET"] == str(tmp_path / "d.sock")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert systemd.uninstall(stop=False) == [unit, env_file]
    assert not unit.exists() and not env_file.exists()


def test_without_systemd_install_refuses_and_writes_nothing(unit_dir, monkeypatch):
    monkeypatch.setattr(systemd, "booted", lambda: False)
    with pytest.raises(MissingDependency, match="systemd is not the init system"):
        systemd.install([])
    assert not unit_dir.exists()

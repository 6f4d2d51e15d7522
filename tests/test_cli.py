"""The CLI's contract: one-line errors, documented exit codes, no change on bad input."""

import subprocess
import sys

import pytest


def run(tmp_path, *argv):
    env = {"VMFIXTURES_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "vmfixtures", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


def test_help_lists_commands_and_exit_codes(tmp_path):
    r = run(tmp_path, "--help")
    assert r.returncode == 0
    for word in ("image", "vm", "ssh", "console", "gc", "exit codes", "another spec"):
        assert word in r.stdout


@pytest.mark.parametrize("argv", [["vm", "start", "ghost"], ["vm", "stop", "ghost"], ["vm", "destroy", "ghost"],
                                  ["vm", "exec", "ghost", "--", "true"], ["console", "ghost"]])
def test_unknown_vm_exits_3_naming_it(tmp_path, argv):
    r = run(tmp_path, *argv)
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("vmfixtures: error: ") and "no VM named 'ghost'" in r.stderr
    assert r.stderr.count("\n") == 1, "one line, no traceback"


def test_bad_config_exits_2_and_creates_nothing(tmp_path):
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  web:\n    cpus: 2\n    memory: 12 parsecs\n")
    r = run(tmp_path, "vm", "create", "web")
    assert r.returncode == 2
    assert f"{tmp_path / 'vmfixtures.yaml'}:4: vms.web.memory" in r.stderr
    assert not (tmp_path / "state" / "vms" / "web").exists()


def test_create_without_name_or_all(tmp_path):
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  web: {}\n")
    r = run(tmp_path, "vm", "create")
    assert r.returncode == 2 and "name a VM or pass --all" in r.stderr


def test_create_unknown_name_creates_nothing(tmp_path):
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  web: {}\n")
    r = run(tmp_path, "vm", "create", "db")
    assert r.returncode == 2 and "no VM named 'db' under 'vms' (defined: web)" in r.stderr
    assert not (tmp_path / "state" / "vms").exists() or not any((tmp_path / "state" / "vms").iterdir())


def test_list_on_empty_storage(tmp_path):
    r = run(tmp_path, "vm", "list", "--json")
    assert r.returncode == 0 and r.stdout.strip() == "[]"


def test_status_of_vms_not_created_yet(tmp_path):
    import json

    (tmp_path / "app").mkdir()
    snap = tmp_path / "backups" / "app" / "20261122T101500.000000"
    snap.mkdir(parents=True)
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  web: {cpus: 2, memory: 1G}\n"
                                             "mounts:\n  - {source: app, target: /work/app, vm: web}\n")
    r = run(tmp_path, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"name": "web", "state": "missing", "cpus": 2, "memory": "1G", "disk": "2G",
                                     "network": "nat", "mounts": [{"source": "app", "target": "/work/app", "mounted": False,
                                                 "last_backup": snap.name}], "agents": []}]
    text = run(tmp_path, "status").stdout
    assert "web" in text and "missing" in text and "last backup 20261122T101500.000000" in text


@pytest.mark.parametrize("body, words", [
    ("vms:\n  web: {}\n", "no forwards under 'forwards'"),
    ("vms:\n  web: {}\nforwards:\n  - {vm: web, kind: local, host: 18095, guest: 80}\n", "VM 'web' is not running"),
])
def test_portforward_refuses_with_nothing_to_forward(tmp_path, body, words):
    (tmp_path / "vmfixtures.yaml").write_text(body)
    r = run(tmp_path, "portforward")
    assert r.returncode in (2, 9) and words in r.stderr, r.stderr


def test_config_example_is_valid_and_never_overwrites(tmp_path):
    r = run(tmp_path, "config", "example")
    assert r.returncode == 0 and (tmp_path / "vmfixtures.yaml").is_file(), r.stderr
    assert run(tmp_path, "config", "check").returncode == 0
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  mine: {}\n")
    r = run(tmp_path, "config", "example")
    assert r.returncode == 0 and "left untouched" in r.stdout
    assert (tmp_path / "vmfixtures.yaml").read_text() == "vms:\n  mine: {}\n"
    assert run(tmp_path, "config", "example", "--force").returncode == 0
    assert "builder" in (tmp_path / "vmfixtures.yaml").read_text()


def test_config_check_names_the_bad_field(tmp_path):
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  web:\n    cpus: lots\n")
    r = run(tmp_path, "config", "check")
    assert r.returncode == 2 and "vmfixtures.yaml:3: vms.web.cpus" in r.stderr


@pytest.mark.parametrize("argv,env,expected", [
    (["--backend", "libvirt"], {}, "libvirt"),
    ([], {"VMFIXTURES_BACKEND": "libvirt"}, "libvirt"),
    ([], {}, "qemu"),
])
def test_create_through_the_daemon_asks_for_the_commands_backend(tmp_path, monkeypatch, argv, env, expected):
    """The daemon's default backend is its own environment's: a command must say which one it chose
    (a daemon started without VMFIXTURES_BACKEND once gave a libvirt run QEMU VMs)."""
    from vmfixtures import cli
    from vmfixtures.client import Client

    asked = []
    monkeypatch.delenv("VMFIXTURES_BACKEND", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(Client, "alive", lambda self: {"pid": 1})
    monkeypatch.setattr(Client, "create", lambda self, storage, spec, lease=None, backend=None: (
        asked.append(backend) or {"status": "created", "state": "leased", "source": "pool"}))
    config = tmp_path / "vmfixtures.yaml"
    config.write_text("vms:\n  devbox: {}\n")
    assert cli.main([*argv, "--storage", str(tmp_path / "vms"), "vm", "create", "devbox", "-c", str(config)]) == 0
    assert asked == [expected], f"the daemon was asked for backend {asked}, expected {expected}"

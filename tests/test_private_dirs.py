"""Per-user folders (daemon socket, daemon home, VM sockets, the SSH key's folder) are created 0700 or,
when they exist already, used only if they are this user's and closed to everyone else (as OpenSSH
treats ~/.ssh). Each refusal is one line and a non-zero exit; the folder is left as it was."""

import os
import stat
import subprocess
import sys

import pytest

from vmfixtures import keys, paths
from vmfixtures.backends.qemu import make_run_dir
from vmfixtures.client import Client
from vmfixtures.errors import PermissionDenied

NOBODY = 65534


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "vmfixtures", "--quiet", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


@pytest.fixture
def loose(tmp_path):
    """Folders another user could have made: group/world-open, foreign-owned, a symlink."""
    open_ = tmp_path / "open"
    open_.mkdir()
    open_.chmod(0o777)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    return {"open": open_, "foreign": foreign, "link": link}


def test_created_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        made = paths.private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert _mode(made) == 0o700 and os.lstat(made).st_uid == os.geteuid()


def test_an_existing_private_folder_is_used(tmp_path):
    (tmp_path / "mine").mkdir(mode=0o700)
    assert paths.private_dir(tmp_path / "mine") == tmp_path / "mine"


@pytest.mark.parametrize("kind, words", [("open", "mode 0777"), ("foreign", f"uid {NOBODY}"), ("link", "symlink")])
def test_a_loose_folder_is_refused_and_left_alone(loose, kind, words):
    folder = loose[kind]
    before = os.lstat(folder)
    with pytest.raises(PermissionDenied) as exc:
        paths.private_dir(folder, "the daemon's socket")
    message = str(exc.value)
    assert "\n" not in message and str(folder) in message and words in message, message
    after = os.lstat(folder)
    assert (after.st_mode, after.st_uid, after.st_ino) == (before.st_mode, before.st_uid, before.st_ino)


@pytest.mark.parametrize("kind", ["open", "foreign", "link"])
def test_daemon_refuses_to_start_on_a_loose_socket_folder(loose, tmp_path, kind):
    sock = loose[kind] / "d.sock"
    r = _cli("daemon", "start", env={"VMFIXTURES_DAEMON_SOCKET": str(sock),
                                     "VMFIXTURES_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == PermissionDenied.exit_code, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(loose[kind]) in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not sock.exists(), "a socket was bound in the refused folder"


def test_daemon_run_refuses_a_loose_socket_folder(loose, tmp_path):
    r = _cli("daemon", "run", env={"VMFIXTURES_DAEMON_SOCKET": str(loose["open"] / "d.sock"),
                                   "VMFIXTURES_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == PermissionDenied.exit_code and len(r.stderr.strip().splitlines()) == 1, r


@pytest.mark.parametrize("kind", ["open", "foreign", "link"])
def test_daemon_refuses_a_loose_home(loose, tmp_path, kind, monkeypatch):
    """The daemon's home is <state>/daemon: pre-create it loose and point the state folder at its parent."""
    state = tmp_path / f"state-{kind}"
    state.mkdir()
    os.rename(loose[kind], state / "daemon")
    sock = tmp_path / "sock" / "d.sock"
    r = _cli("daemon", "start", env={"VMFIXTURES_DAEMON_SOCKET": str(sock), "VMFIXTURES_STATE_DIR": str(state)})
    assert r.returncode == PermissionDenied.exit_code, r
    assert len(r.stderr.strip().splitlines()) == 1 and str(state / "daemon") in r.stderr, r.stderr
    assert not sock.exists()


def test_client_will_not_talk_through_a_loose_socket_folder(loose):
    with pytest.raises(PermissionDenied):
        Client(loose["open"] / "d.sock").alive()


def test_vm_socket_root_refused_when_foreign(loose, tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    os.rename(loose["foreign"], runtime / f"vmfx-{os.getuid()}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    vm_dir = tmp_path / "vms" / "box"
    vm_dir.mkdir(parents=True)
    with pytest.raises(PermissionDenied):
        make_run_dir(vm_dir)
    assert not (vm_dir / "run").exists()


def test_ssh_key_folder_refused_when_open(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "ssh").mkdir(parents=True)
    (data / "ssh").chmod(0o755)
    monkeypatch.setenv("VMFIXTURES_DATA_DIR", str(data))
    with pytest.raises(PermissionDenied):
        keys.ensure_keypair()
    assert not (data / "ssh" / "id_ed25519").exists()

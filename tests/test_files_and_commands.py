"""vmfixtures cp and vm exec: what is refused before any VM is touched, the argv a guest command
becomes, and the config fields user and arch. Copies and commands against real VMs are in
features/files_and_commands.feature."""

import subprocess
import sys

import pytest

from vmfixtures.capabilities import probe_arch, require_arch
from vmfixtures.errors import ConfigError, NotFound, Unsupported
from vmfixtures.guest import commands
from vmfixtures.guest.files import Location, parse_location, parse_pair, upload
from vmfixtures.spec import VMSpec, load_config


def run(tmp_path, *argv):
    env = {"VMFIXTURES_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "VMFIXTURES_DAEMON": "off"}
    return subprocess.run([sys.executable, "-m", "vmfixtures", *argv], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True)


# -- where a copy goes -------------------------------------------------------------------
@pytest.mark.parametrize("text, location", [
    ("web:/root/a.txt", Location("web", "/root/a.txt")),
    ("web:/", Location("web", "/")),
    ("a.txt", Location(None, "a.txt")),
    ("./web:/x", Location(None, "./web:/x")),  # the documented way to name a host path with ':'
    ("/tmp/web:/x", Location(None, "/tmp/web:/x")),
    ("Web:/x", Location(None, "Web:/x")),  # not a VM name: a host path
])
def test_location(text, location):
    assert parse_location(text) == location


@pytest.mark.parametrize("src, dst, words", [
    ("a.txt", "b.txt", "neither"),
    ("web:/a", "db:/b", "both in VMs"),
    ("a.txt", "web:relative/b", "must be absolute"),
    ("", "web:/b", "empty"),
])
def test_bad_pairs_are_refused(src, dst, words):
    with pytest.raises(ConfigError, match=words):
        parse_pair(src, dst)


class NoGuest:
    """A machine that fails the test if anything reaches the guest."""

    name = "web"

    def __getattr__(self, item):
        raise AssertionError(f"the guest was reached ({item}) before the host side was checked")


def test_upload_of_a_missing_host_file_names_it_before_reaching_the_guest(tmp_path):
    with pytest.raises(NotFound, match=f"the host has no file {tmp_path / 'nope'}"):
        upload(NoGuest(), tmp_path / "nope", "/root/")


def test_upload_of_a_folder_is_refused_before_reaching_the_guest(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; cp copies one file"):
        upload(NoGuest(), tmp_path, "/root/")


@pytest.mark.parametrize("argv, code, words", [
    (["cp", "a.txt", "b.txt"], 2, "neither a.txt nor b.txt names a VM"),
    (["cp", "a.txt", "ghost:/root/"], 3, "the host has no file"),
    (["cp", "ghost:/root/a", "."], 3, "no VM named 'ghost'"),
    (["cp", ".", "ghost:/root/"], 2, "is a folder"),
    (["cp", "--user", "Bad User", "ghost:/a", "."], 2, "--user: 'Bad User' is not a guest user name"),
])
def test_cp_refusals_are_one_line(tmp_path, argv, code, words):
    r = run(tmp_path, *argv)
    assert r.returncode == code and words in r.stderr, r.stderr
    assert r.stderr.startswith("vmfixtures: error: ") and r.stderr.count("\n") == 1


# -- commands ------------------------------------------------------------------------------
def test_plain_command_is_wrapped_only_to_exec_it():
    assert commands.command_argv(["make", "test"]) == ["/bin/sh", "-c", commands.WRAPPER, "vmfixtures-exec", "",
                                                       "make", "test"]


def test_user_folder_and_environment_wrap_in_that_order():
    argv = commands.command_argv(["make"], user="builder", cwd="/srv", env={"A": "1", "B": "x=y z"})
    assert argv == ["/usr/sbin/runuser", "-u", "builder", "--", "/usr/bin/env", "A=1", "B=x=y z",
                    "/bin/sh", "-c", commands.WRAPPER, "vmfixtures-exec", "/srv", "make"]


def test_wrapper_changes_folder_then_execs(tmp_path):
    """The wrapper itself, run by the host's sh: folder, arguments kept apart, exit code kept."""
    argv = commands.command_argv(["sh", "-c", 'pwd; printf "%s|" "$@"; exit 7', "x", "a b", "c"], cwd=str(tmp_path))
    r = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (7, f"{tmp_path}\na b|c|")


def test_wrapper_reports_a_missing_command_as_127():
    r = subprocess.run(commands.command_argv(["no-such-command-here"]), check=False, capture_output=True, text=True)
    assert r.returncode == 127


@pytest.mark.parametrize("items, env", [
    (None, {}), (["A=1"], {"A": "1"}), (["A="], {"A": ""}), (["URL=a=b"], {"URL": "a=b"}),
])
def test_env_items(items, env):
    assert commands.parse_env(items) == env


@pytest.mark.parametrize("item", ["A", "=1", "1A=2", "A B=1", "A-B=1"])
def test_bad_env_items_are_refused_naming_them(item):
    with pytest.raises(ConfigError, match="is not NAME=VALUE"):
        commands.parse_env([item])


@pytest.mark.parametrize("argv, code, words", [
    (["vm", "exec", "ghost", "--cwd", "relative", "--", "true"], 2, "--cwd: 'relative' must be an absolute"),
    (["vm", "exec", "ghost", "--env", "1A=2", "--", "true"], 2, "--env: '1A=2' is not NAME=VALUE"),
    (["vm", "exec", "ghost", "--cwd", "/srv", "true"], 2, "give the command after --"),
    (["vm", "exec", "ghost", "--user", "nobody", "--", "true"], 3, "no VM named 'ghost'"),
    (["vm", "exec", "ghost"], 2, "give the command to run after --"),
])
def test_exec_refusals_are_one_line(tmp_path, argv, code, words):
    r = run(tmp_path, *argv)
    assert r.returncode == code and words in r.stderr, r.stderr
    assert r.stderr.startswith("vmfixtures: error: ") and r.stderr.count("\n") == 1


def test_exec_unknown_option_after_name_stops(tmp_path):
    r = run(tmp_path, "vm", "exec", "ghost", "--bogus", "1", "--", "true")
    assert r.returncode == 2 and "unrecognized arguments: --bogus 1" in r.stderr


# -- the config's user and arch ----------------------------------------------------------
def test_user_and_arch_are_read_and_recorded(tmp_path):
    (tmp_path / "c.yaml").write_text("vms:\n  web:\n    user: builder\n    arch: x86_64\n  db: {}\n")
    config = load_config(tmp_path / "c.yaml")
    assert (config.vm("web").user, config.vm("db").user, config.vm("db").arch) == ("builder", "root", "x86_64")
    assert VMSpec.from_dict(config.vm("web").to_dict()) == config.vm("web")
    assert VMSpec.from_dict({"name": "old"}) == VMSpec("old")  # a record from before these fields


@pytest.mark.parametrize("body, line, field, words", [
    ("vms:\n  web:\n    user: Bob Smith\n", 3, "vms.web.user", "is not a guest user name"),
    ("vms:\n  web:\n    user: 7\n", 3, "vms.web.user", "is not a guest user name"),
    ("vms:\n  web:\n    arch: sparc64\n", 3, "vms.web.arch", "unknown architecture 'sparc64' (known: x86_64, aarch64)"),
])
def test_bad_user_or_arch_names_file_line_and_field(tmp_path, body, line, field, words):
    (tmp_path / "c.yaml").write_text(body)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "c.yaml")
    assert str(exc.value).startswith(f"{tmp_path / 'c.yaml'}:{line}: {field}") and words in str(exc.value)


def test_arch_mismatch_is_a_difference():
    assert VMSpec("web").differences(VMSpec("web", user="builder")) == ["user: existing root, requested builder"]


def test_an_architecture_without_emulator_or_recipe_names_both(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: None)
    reason = probe_arch("aarch64").reason
    assert "qemu-system-aarch64 is not installed (Debian package qemu-system-arm)" in reason
    assert "no aarch64 guest image recipe" in reason
    with pytest.raises(Unsupported, match="VM 'arm': architecture aarch64 cannot run here"):
        require_arch(VMSpec("arm", arch="aarch64"))


def test_an_architecture_with_emulator_but_no_recipe_names_the_recipe(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: f"/usr/bin/{tool}")
    reason = probe_arch("aarch64").reason
    assert "not installed" not in reason and "no aarch64 guest image recipe" in reason
    assert probe_arch("x86_64").available


def test_create_refuses_an_architecture_it_cannot_run_and_creates_nothing(tmp_path):
    (tmp_path / "vmfixtures.yaml").write_text("vms:\n  arm:\n    arch: aarch64\n")
    r = run(tmp_path, "vm", "create", "arm")
    assert r.returncode == 10 and "architecture aarch64 cannot run here" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert not (tmp_path / "state" / "vms" / "arm").exists()

"""The Multipass backend without Multipass: parsers on transcribed outputs, the CLI through a fake runner.

Sample outputs are transcribed from canonical/multipass at commit 9b0af2ec31ff (2026-08-21);
each one names the file it comes from. Instance names are changed to ``vmfx-...`` where a
test needs instances the project owns; the shapes and values are Multipass's.
"""

import subprocess

import pytest

from vmfixtures.backends.base import VMState
from vmfixtures.backends.multipass import InstanceInfo, MultipassBackend, parse_info, parse_list
from vmfixtures.errors import ConfigError, GuestError, Mismatch, MissingDependency, NotFound, PermissionDenied
from vmfixtures.spec import VMSpec

# tests/unit/test_data/formatters/json/single_instance_info_reply.json (zone/load/hashes trimmed)
INFO_RUNNING = """{
    "errors": [
    ],
    "info": {
        "foo": {
            "zone": {"name": "zone1", "available": true},
            "state": "Running",
            "image_hash": "1797c5c82016c1e65f4008fcf89deae3a044ef76087a9ec5b907c6d64a3609ac",
            "image_release": "16.04 LTS",
            "release": "Ubuntu 16.04.3 LTS",
            "cpu_count": "1",
            "snapshot_count": "0",
            "load": [0.45, 0.51, 0.15],
            "disks": {"sda1": {"used": "1288490188", "total": "5153960756"}},
            "memory": {"used": 60817408, "total": 1503238554},
            "ipv4": ["10.168.32.2", "200.3.123.29"],
            "mounts": {
                "foo": {"uid_mappings": ["1000:1000"], "gid_mappings": ["1000:1000"],
                        "source_path": "/home/user/foo"},
                "test_dir": {"uid_mappings": ["1000:1000"], "gid_mappings": ["1000:1000"],
                             "source_path": "/home/user/test_dir"}
            }
        }
    }
}"""

# tests/unit/test_data/formatters/json/multiple_instances_info_reply.json, the stopped "bombastic"
INFO_STOPPED = """{
    "errors": [],
    "info": {
        "bombastic": {
            "zone": {"name": "zone2", "available": false},
            "state": "Stopped",
            "image_hash": "ab5191cc172564e7cc0eafd397312a32598823e645279c820f0935393aead509",
            "image_release": "18.04 LTS",
            "release": "",
            "cpu_count": "",
            "snapshot_count": "3",
            "load": [],
            "disks": {"sda1": {}},
            "memory": {},
            "ipv4": [],
            "mounts": {}
        }
    }
}"""

# tests/unit/test_data/formatters/json/multiple_instances_list_reply.json, names changed to vmfx-*,
# plus a user's instance "calm-squirrel" (docs/reference/command-line-interface/list.md) and a
# Deleted one (daemon.cpp's list reports deleted instances with state DELETED).
LIST = """{
    "list": [
        {"name": "vmfx-web", "state": "Running", "ipv4": ["10.21.124.56"],
         "release": "Ubuntu 16.04 LTS", "zone": {"name": "zone1", "available": true}},
        {"name": "vmfx-db", "state": "Stopped", "ipv4": [],
         "release": "Ubuntu 18.04 LTS", "zone": {"name": "zone2", "available": false}},
        {"name": "calm-squirrel", "state": "Running", "ipv4": ["10.218.69.109"],
         "release": "Ubuntu 26.04 LTS", "zone": {"name": "zone1", "available": true}},
        {"name": "vmfx-old", "state": "Deleted", "ipv4": [],
         "release": "Not Available", "zone": {"name": "zone1", "available": true}}
    ]
}"""

# src/client/common/client_common.cpp standard_failure_handler_for prints "<command> failed: <message>";
# the message is daemon.cpp's `instance "{}" does not exist`; return_code_for gives CommandFail = 2.
def missing(command, inst):
    return 2, "", f'{command} failed: instance "{inst}" does not exist\n'


def info_of(inst, body):
    """INFO_RUNNING/INFO_STOPPED with the instance renamed."""
    return body.replace('"foo": {\n            "zone"', f'"{inst}": {{\n            "zone"').replace(
        '"bombastic"', f'"{inst}"')


class FakeMultipass:
    """A runner that records argv and answers from a table: (argv tail) -> (rc, stdout, stderr) or exception."""

    def __init__(self, answers=None):
        self.calls, self.answers = [], dict(answers or {})

    def __call__(self, argv, input, timeout):
        self.calls.append(argv)
        answer = self.answers.get(tuple(argv[1:]), (0, "", ""))
        if isinstance(answer, BaseException):
            raise answer
        rc, out, err = answer
        return subprocess.CompletedProcess(argv, rc, out.encode(), err.encode())


# -- parsers ---------------------------------------------------------------------------


def test_info_of_a_running_instance_with_mounts_and_addresses():
    foo = parse_info(INFO_RUNNING)["foo"]
    assert foo == InstanceInfo(name="foo", state="running", ipv4=("10.168.32.2", "200.3.123.29"),
                               image="16.04 LTS", release="Ubuntu 16.04.3 LTS", cpus=1,
                               memory=1503238554, disk=5153960756,
                               mounts={"foo": "/home/user/foo", "test_dir": "/home/user/test_dir"})


def test_info_of_a_stopped_instance_has_unknowns_as_none():
    b = parse_info(INFO_STOPPED)["bombastic"]
    assert (b.state, b.ipv4, b.cpus, b.memory, b.disk, b.mounts) == ("stopped", (), None, None, None, {})


@pytest.mark.parametrize("raw, mapped", [("Running", "running"), ("Stopped", "stopped"), ("Suspended", "stopped"),
                                         ("Deleted", "missing"), ("Starting", "starting"),
                                         ("Delayed Shutdown", "delayed shutdown"), ("Unknown", "unknown")])
def test_states_are_mapped(raw, mapped):
    assert parse_info(INFO_STOPPED.replace('"Stopped"', f'"{raw}"'))["bombastic"].state == mapped


def test_list_with_several_instances():
    listed = parse_list(LIST)
    assert [(i.name, i.state, i.ipv4) for i in listed] == [
        ("vmfx-web", "running", ("10.21.124.56",)), ("vmfx-db", "stopped", ()),
        ("calm-squirrel", "running", ("10.218.69.109",)), ("vmfx-old", "missing", ())]
    assert listed[0].release == "Ubuntu 16.04 LTS" and listed[3].release == ""
    assert parse_list('{"list": []}') == []  # tests/unit/test_data/formatters/json/empty_list_reply.json


@pytest.mark.parametrize("parse, text, complaint", [
    (parse_list, "Name  State  IPv4  Release\n", "output is not JSON"),  # the table format by mistake
    (parse_info, '{"errors": [], "info": {"foo": {"state": "Running"', "output is not JSON"),  # cut short
    (parse_list, '{"list": {"name": "x"}}', "list should be a list"),
    (parse_list, '{"list": [{"name": "x"}]}', "list[0].state should be a str"),
    (parse_info, '{"errors": [], "info": []}', "info should be a dict"),
    (parse_info, INFO_STOPPED.replace('"cpu_count": ""', '"cpu_count": "four"'), "cpu_count is 'four'"),
])
def test_malformed_output_is_one_guest_error(parse, text, complaint):
    with pytest.raises(GuestError) as exc:
        parse(text)
    assert complaint in str(exc.value)
    assert "\n" not in str(exc.value)


# -- the backend through a fake runner ---------------------------------------------------------


def test_names_are_ours_only_without_prefix_and_without_deleted():
    fake = FakeMultipass({("list", "--format", "json"): (0, LIST, "")})
    assert MultipassBackend(runner=fake).names() == ["db", "web"]


def test_launch_argv():
    fake = FakeMultipass({("info", "--format", "json", "vmfx-web"): missing("info", "vmfx-web")})
    result = MultipassBackend(runner=fake).create(VMSpec("web", cpus=2, memory=1536 * 1024**2,
                                                          disk=10 * 1024**3, image="ubuntu-24.04"))
    assert fake.calls[-1] == ["multipass", "launch", "--name", "vmfx-web", "--cpus", "2", "--memory", "1536M",
                              "--disk", "10G", "--timeout", "600", "24.04"]
    assert (result.status, result.state) == ("created", VMState.RUNNING)


def test_existing_instance_is_reported_or_mismatched():
    fake = FakeMultipass({("info", "--format", "json", "vmfx-web"): (0, info_of("vmfx-web", INFO_RUNNING), "")})
    backend = MultipassBackend(runner=fake)
    assert backend.create(VMSpec("web", image="ubuntu-24.04")).status == "exists"
    with pytest.raises(Mismatch, match="cpus: existing 1, requested 2"):
        backend.create(VMSpec("web", cpus=2, image="ubuntu-24.04"))
    assert not any("launch" in c for c in fake.calls)


def test_debian_images_are_refused_before_calling_multipass():
    fake = FakeMultipass()
    with pytest.raises(ConfigError, match="Ubuntu images only"):
        MultipassBackend(runner=fake).create(VMSpec("web"))  # the default image is debian-12
    assert fake.calls == []


def test_missing_instance_is_not_found_with_stderr_in_one_line():
    fake = FakeMultipass({("info", "--format", "json", "vmfx-ghost"): missing("info", "vmfx-ghost"),
                          ("delete", "--purge", "vmfx-ghost"): missing("delete", "vmfx-ghost"),
                          # mount/umount word it with single quotes (daemon.cpp)
                          ("umount", "vmfx-ghost:/data"):
                              (2, "", "umount failed: instance 'vmfx-ghost' does not exist\n")})
    backend = MultipassBackend(runner=fake)
    assert backend.state("ghost") == VMState.MISSING
    with pytest.raises(NotFound) as exc:
        backend.destroy("ghost")
    assert str(exc.value) == ('`multipass delete --purge vmfx-ghost` exited 2: '
                              'delete failed: instance "vmfx-ghost" does not exist')
    with pytest.raises(NotFound):
        backend.umount("ghost", "/data")


def test_state_of_running_and_stopped():
    fake = FakeMultipass({("info", "--format", "json", "vmfx-a"): (0, info_of("vmfx-a", INFO_RUNNING), ""),
                          ("info", "--format", "json", "vmfx-b"): (0, info_of("vmfx-b", INFO_STOPPED), "")})
    backend = MultipassBackend(runner=fake)
    assert (backend.state("a"), backend.state("b")) == (VMState.RUNNING, VMState.STOPPED)
    assert backend.info("a").mounts["test_dir"] == "/home/user/test_dir"


def test_exec_passes_the_guest_exit_code_through():
    fake = FakeMultipass({("exec", "vmfx-web", "--no-map-working-directory", "--", "sh", "-c", "echo out; exit 2"):
                          (2, "out\n", "err\n")})
    r = MultipassBackend(runner=fake).exec("web", ["sh", "-c", "echo out; exit 2"])
    assert (r.exit_code, r.stdout, r.stderr, r.command) == (2, "out\n", "err\n", "sh -c 'echo out; exit 2'")


def test_exec_failure_of_multipass_itself_is_an_error():
    # src/client/cli/cmd/exec.cpp: "exec failed: <what>" and ReturnCode::ShellExecFail = 255; <what> as
    # src/ssh/plain_ssh_session.cpp + include/multipass/ssh/throw_on_error.h word it (libssh's part illustrative)
    fake = FakeMultipass({("exec", "vmfx-web", "--no-map-working-directory", "--", "true"):
                          (255, "", "exec failed: ssh connection failed: 'Connection refused'\n"),
                          ("exec", "vmfx-ghost", "--no-map-working-directory", "--", "true"):
                              missing("exec", "vmfx-ghost")})
    backend = MultipassBackend(runner=fake)
    with pytest.raises(GuestError, match="exited 255: exec failed: ssh connection failed"):
        backend.exec("web", ["true"])
    with pytest.raises(NotFound):
        backend.exec("ghost", ["true"])


def test_destroy_deletes_with_purge_and_checks_the_list():
    fake = FakeMultipass({("list", "--format", "json"): (0, LIST, "")})
    proof = MultipassBackend(runner=fake).destroy("gone")
    assert fake.calls[0] == ["multipass", "delete", "--purge", "vmfx-gone"]
    assert proof.complete and proof.removed == ["vmfx-gone"] and proof.pid is None
    assert not MultipassBackend(runner=fake).destroy("web").complete  # still listed


def test_stop_forces_after_the_deadline():
    fake = FakeMultipass({("info", "--format", "json", "vmfx-web"): (0, info_of("vmfx-web", INFO_RUNNING), ""),
                          ("stop", "vmfx-web"): subprocess.TimeoutExpired(["multipass", "stop", "vmfx-web"], 2)})
    result = MultipassBackend(runner=fake).stop("web", timeout=2)
    assert not result.graceful and fake.calls[-1] == ["multipass", "stop", "--force", "vmfx-web"]


def test_transfer_and_mount_argv(tmp_path):
    fake = FakeMultipass()
    backend = MultipassBackend(runner=fake)
    backend.transfer_in("web", tmp_path / "a.txt", "/tmp/a.txt")
    backend.transfer_out("web", "/tmp/b.txt", tmp_path)
    backend.mount("web", tmp_path, "/srv/data")
    assert fake.calls == [["multipass", "transfer", "--recursive", str(tmp_path / "a.txt"), "vmfx-web:/tmp/a.txt"],
                          ["multipass", "transfer", "--recursive", "vmfx-web:/tmp/b.txt", str(tmp_path)],
                          ["multipass", "mount", str(tmp_path), "vmfx-web:/srv/data"]]


def test_socket_errors():
    # include/multipass/cli/dispatch_rpc.h: both are gRPC statuses other than UNAVAILABLE, hence exit 2
    fake = FakeMultipass({("list", "--format", "json"): (2, "", "list failed: cannot connect to the multipass socket\n"
                          "Please ensure multipassd is running and 'unix:/var/snap/multipass/common/multipass_socket'"
                          " is accessible\n")})
    with pytest.raises(GuestError, match="is multipassd running"):
        MultipassBackend(runner=fake).names()
    fake.answers[("list", "--format", "json")] = (2, "", "list failed: multipass socket access denied\n")
    with pytest.raises(PermissionDenied):
        MultipassBackend(runner=fake).names()


def test_missing_binary_is_a_missing_dependency(tmp_path):
    # the real subprocess runner, pointed at a binary that is not there
    with pytest.raises(MissingDependency, match="ships as a snap") as exc:
        MultipassBackend(binary=str(tmp_path / "multipass")).names()
    assert exc.value.exit_code == 5

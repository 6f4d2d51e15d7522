"""Network profiles: the config's forms, its refusals, and the firewall a filtered VM gets."""

import json
import os
import shutil

import pytest

from vmfixtures.errors import ConfigError
from vmfixtures.network import DEFAULT_ALLOW, NetworkSpec, _ruleset, describe_text, parse_network
from vmfixtures.procs import ProcessId
from vmfixtures.spec import VMSpec


@pytest.mark.parametrize("raw, expected", [
    (None, NetworkSpec("nat", ())),
    ("nat", NetworkSpec("nat", ())),
    ("isolated", NetworkSpec("isolated", ())),
    ("filtered", NetworkSpec("filtered", DEFAULT_ALLOW)),
    ({"profile": "filtered", "allow": [443, 80, 443]}, NetworkSpec("filtered", (80, 443))),
])
def test_forms(raw, expected):
    assert parse_network(raw, "vms.a.network") == expected


@pytest.mark.parametrize("raw, field", [
    ("open", "vms.a.network.profile"),
    ({"profile": "filtered", "allow": []}, "vms.a.network.allow"),
    ({"profile": "filtered", "allow": [0]}, "vms.a.network.allow[0]"),
    ({"profile": "filtered", "allow": [True]}, "vms.a.network.allow[0]"),
    ({"profile": "filtered", "allow": [22, "ssh"]}, "vms.a.network.allow[1]"),
    ({"profile": "nat", "allow": [22]}, "vms.a.network.allow"),
    ({"profile": "nat", "ports": [22]}, "vms.a.network.ports"),
    (["nat"], "vms.a.network"),
])
def test_refusals_name_the_field(raw, field):
    with pytest.raises(ConfigError) as e:
        parse_network(raw, "vms.a.network")
    assert str(e.value).startswith(f"{field}:")


def test_spec_round_trip_and_mismatch():
    a = VMSpec("a", network=NetworkSpec("filtered", (443,)))
    assert VMSpec.from_dict(a.to_dict()) == a
    assert VMSpec.from_dict({"name": "a"}).network == NetworkSpec()  # records from before profiles
    assert any(d.startswith("network:") for d in VMSpec("a").differences(a))


def test_filtered_rules_match_only_the_vms_group_and_allow_only_its_ports():
    rules = _ruleset("vmfx_2000000007", 2000000007, (22, 443))
    lines = [l.strip() for l in rules.splitlines() if "skgid" in l]
    assert all("meta skgid 2000000007" in l for l in lines)
    assert "tcp dport { 22, 443 } accept" in rules
    assert lines[0].endswith("ct state established,related accept")
    assert lines[-1].endswith("reject")  # anything not allowed above is refused


def test_info_text_says_profile_and_forwards():
    text = describe_text({"name": "a", "state": "running", "profile": "filtered", "allow": [443],
                          "gateway": "10.0.2.2", "addresses": [{"interface": "eth0", "address": "10.0.2.15/24"}],
                          "forwards": [{"host": "127.0.0.1:2222", "guest": 22, "what": "ssh"}]})
    assert "network filtered (outbound TCP ports 443; DNS)" in text
    assert "10.0.2.15/24 on eth0" in text and "127.0.0.1:2222 -> guest port 22 (ssh)" in text


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("passt") or not shutil.which("nft"),
                    reason="needs root, passt and nft")
def test_observer_finds_and_removes_what_a_dead_vm_left(tmp_path, monkeypatch):
    """A passt whose socket folder is gone and a filtered VM's firewall table without its passt are
    reported, and --fix removes both (proven by the process table and nft's own listing)."""
    from vmfixtures import network, observer
    from vmfixtures.backends.qemu import runtime_root

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(observer, "HELPER_GRACE", 0.0)
    folder = runtime_root() / "0123456789abcdef"
    folder.mkdir(parents=True)
    proc = network._spawn_passt(shutil.which("passt"), folder / network.SOCKET, network._free_port(), None)
    table = f"{network.TABLE_PREFIX}{network.GID_BASE + 4242}"
    network._nft(network._ruleset(table, network.GID_BASE + 4242, (443,)))
    try:
        assert network._listening(proc, 0, folder / network.SOCKET, timeout=0.5) is False  # port 0: just wait
        shutil.rmtree(folder)  # the VM's socket folder went away without its passt
        found = {f.type: f for f in observer._stray_network_helpers()}
        assert found["stray-network-helper"].object == f"passt pid {proc.pid}"
        assert found["stray-firewall"].object == f"nftables table {table}"
        observer.Observer.fix(None, list(found.values()))
        assert proc.wait(10) is not None
        assert table not in network.our_tables()
    finally:
        if proc.poll() is None:
            proc.kill()
        network.drop_table(table)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_a_table_whose_group_still_runs_elsewhere_is_not_stray():
    """Another installation on the host (its own state folder) runs a filtered VM: its passt is not
    one of ours, but its table is in use and must not be reported (nor dropped by --fix)."""
    import subprocess
    import sys

    from vmfixtures import network, observer

    gid = network.GID_BASE + 4343
    table = f"{network.TABLE_PREFIX}{gid}"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], group=gid)
    network._nft(network._ruleset(table, gid, (443,)))
    try:
        assert table in network.our_tables()
        objects = [f.object for f in observer._stray_network_helpers()]
        assert f"nftables table {table}" not in objects, objects
        holder.kill()
        holder.wait()
        objects = [f.object for f in observer._stray_network_helpers()]
        assert f"nftables table {table}" in objects, "once no process has the group, the table is stray"
    finally:
        holder.kill()
        network.drop_table(table)


def test_observer_finds_and_kills_an_agent_relay_whose_vm_is_gone(tmp_path, monkeypatch):
    """An agent relay whose socket folder holds no running VM is reported, and --fix kills it
    (proven by the process table); one whose folder's QEMU runs is not reported."""
    import socket

    from vmfixtures import observer
    from vmfixtures.backends import qemu

    monkeypatch.setattr(observer, "HELPER_GRACE", 0.0)
    run = tmp_path / "run"
    run.mkdir()
    upstream = socket.socket(socket.AF_UNIX)
    upstream.bind(str(run / "qga.sock"))  # stands in for QEMU's agent socket
    upstream.listen(1)
    try:
        relay = qemu._start_agent_relay(run, tmp_path)
        (run / "run.json").write_text(json.dumps(ProcessId.of(os.getpid()).record()))  # "QEMU" runs
        assert not [f for f in observer._stray_agent_relays() if f.object == f"agent relay pid {relay.pid}"]
        (run / "run.json").write_text(json.dumps({"pid": 1, "create_time": 0.0}))  # its QEMU is gone
        found = [f for f in observer._stray_agent_relays() if f.object == f"agent relay pid {relay.pid}"]
        assert found and "no running VM" in found[0].evidence, found
        observer.Observer.fix(None, found)
        assert relay.process() is None, "expected --fix to kill the relay"
    finally:
        upstream.close()
        proc = relay.process() if "relay" in locals() else None
        if proc:
            proc.kill()

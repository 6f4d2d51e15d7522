"""The warm pool's choices: which specs get idle VMs, and which snapshots a start-up forgets.

The planning functions alone, then one daemon service on real QEMU whose only place in the pool
moves to the spec leases ask for now."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmfixtures.daemon.pool import next_refill, snapshots_to_forget

DAY = 86400.0


def _idle(vm_id: int, key: str) -> dict:
    return {"id": vm_id, "pool_key": key}


def test_a_refill_serves_the_most_recently_wanted_spec_first():
    assert next_refill([], {"old": 1.0, "new": 2.0}, 1, 2) == ("new", None)
    assert next_refill([_idle(1, "new")], {"old": 1.0, "new": 2.0}, 1, 2) == ("old", None)


def test_a_full_pool_evicts_the_idle_vm_of_the_spec_wanted_longest_ago():
    idle = [_idle(1, "stale"), _idle(2, "older")]
    wanted = {"stale": 1.0, "older": 0.5, "now": 3.0}
    assert next_refill(idle, wanted, 1, 2) == ("now", idle[1])


def test_a_full_pool_of_newer_specs_is_left_alone():
    idle = [_idle(1, "a"), _idle(2, "b")]
    assert next_refill(idle, {"a": 5.0, "b": 4.0, "c": 3.0}, 1, 2) == (None, None)
    assert next_refill(idle, {"a": 5.0, "b": 4.0}, 1, 2) == (None, None)  # every spec served


def test_an_idle_vm_of_a_spec_no_longer_known_is_evicted_first():
    """An idle VM whose spec this daemon never saw wanted (a restart forgot it) counts as wanted at 0."""
    idle = [_idle(1, "forgotten"), _idle(2, "a")]
    assert next_refill(idle, {"a": 1.0, "b": 2.0}, 1, 2) == ("b", idle[0])


def test_start_up_forgets_snapshots_beyond_the_newest_and_the_old_ones():
    now = 100 * DAY
    used = {f"k{i}": now - i * 60 for i in range(5)} | {"ancient": now - 30 * DAY}
    gone = snapshots_to_forget(used, set(), now, keep=3, max_age=7 * DAY)
    assert set(gone) == {"k3", "k4", "ancient"}, gone
    assert gone["ancient"] == "not wanted for 30 days" and "3 most recently wanted" in gone["k3"]


def test_a_snapshot_a_live_vm_uses_is_kept_whatever_its_age():
    now = 100 * DAY
    gone = snapshots_to_forget({"a": now, "b": now - 30 * DAY}, {"b"}, now, keep=1, max_age=7 * DAY)
    assert gone == {}, gone


@pytest.mark.vm
def test_the_only_idle_place_moves_to_the_spec_asked_for_now(tmp_path, monkeypatch):
    """One idle place (max_idle 1): a lease of another spec takes it over from the first one's idle VM,
    and the next lease of that spec is a hand-off. Facts: the ledger's sources, and the QEMU processes
    in the pool's folder."""
    from vmfixtures.backends.qemu import our_qemu_processes
    from vmfixtures.daemon.service import FixtureService

    monkeypatch.setenv("VMFIXTURES_STATE_DIR", str(tmp_path / "state"))
    svc = FixtureService(tmp_path / "state" / "daemon", idle_per_spec=1, max_idle=1)
    storage = str(tmp_path / "vms")
    lease = svc.open_lease(os.getpid(), None, "run", None, None)["id"]
    nat, isolated = {"name": "a", "network": "nat"}, {"name": "b", "network": "isolated"}
    try:
        for spec in (nat, isolated):  # one template each; the last one asked for is the newest
            svc.create(storage, spec, lease)
            svc.destroy(storage, spec["name"])
        svc.pool.refill()
        idle = svc.ledger.live_vms(state="pooled")
        assert len(idle) == 1, idle
        isolated_key = max(svc.pool.wanted, key=svc.pool.wanted.get)
        assert idle[0]["pool_key"] == isolated_key, "the one idle VM should be of the spec asked for last"
        first_pid = {p.pid for p in our_qemu_processes(Path(svc.pool.backend("qemu").storage))}

        assert svc.create(storage, nat, lease)["source"] != "pool"  # nat has no idle VM: restored on demand
        svc.destroy(storage, "a")
        svc.pool.refill()  # nat is the newest want now: its VM replaces isolated's
        idle = svc.ledger.live_vms(state="pooled")
        assert len(idle) == 1 and idle[0]["pool_key"] != isolated_key, idle
        now_pids = {p.pid for p in our_qemu_processes(Path(svc.pool.backend("qemu").storage))}
        assert len(now_pids) == 1 and not now_pids & first_pid, \
            f"expected isolated's idle QEMU {first_pid} gone and one new one; found {now_pids}"
        assert svc.create(storage, nat, lease)["source"] == "pool"
    finally:
        svc.pool.close()
        svc.end_lease(lease)
        svc.ledger.close()


def test_a_snapshot_key_leaves_out_the_allowed_ports_and_an_idle_key_keeps_them():
    from vmfixtures.daemon.pool import idle_key, pool_key
    from vmfixtures.network import NetworkSpec
    from vmfixtures.spec import VMSpec

    web, ssh = VMSpec("a", network=NetworkSpec("filtered", (443,))), VMSpec("a", network=NetworkSpec("filtered", (22,)))
    assert pool_key(web, "img") == pool_key(ssh, "img")  # the firewall rules are the host's, made per launch
    assert pool_key(web, "img") != pool_key(VMSpec("a", network=NetworkSpec("isolated")), "img")
    assert idle_key(web, "k") != idle_key(ssh, "k") and idle_key(VMSpec("a"), "k") == "k"


@pytest.mark.vm
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="a filtered network's rules need root and nft")
def test_one_snapshot_serves_every_allow_list_and_an_idle_vm_only_its_own(tmp_path, monkeypatch):
    """A lease of another allow-list restores from the same snapshot (no template boot, no new snapshot) and
    never gets the idle VM made for the first list; its firewall table (read with nft) allows its own port."""
    from vmfixtures import network
    from vmfixtures.daemon.service import FixtureService

    monkeypatch.setenv("VMFIXTURES_STATE_DIR", str(tmp_path / "state"))
    home = tmp_path / "state" / "daemon"
    svc = FixtureService(home, idle_per_spec=1, max_idle=1)
    storage = tmp_path / "vms"
    lease = svc.open_lease(os.getpid(), None, "run", None, None)["id"]
    first = {"name": "a", "network": {"profile": "filtered", "allow": [18443]}}
    other = {"name": "b", "network": {"profile": "filtered", "allow": [18444]}}
    try:
        svc.create(str(storage), first, lease)
        svc.destroy(str(storage), "a")
        svc.pool.refill()  # one idle VM, with the first list's rules
        snapshots = sorted(p.name for p in (home / "snapshots").iterdir())
        assert svc.create(str(storage), other, lease)["source"] == "template"
        assert sorted(p.name for p in (home / "snapshots").iterdir()) == snapshots, "expected no new snapshot"
        table = network.read_record(storage / "b" / "run")["table"]
        rules = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True, text=True).stdout
        assert "dport { 18444 }" in rules.replace("dport 18444", "dport { 18444 }") and "18443" not in rules, rules
        svc.destroy(str(storage), "b")
        assert svc.create(str(storage), first, lease)["source"] == "pool"
    finally:
        svc.pool.close()
        svc.end_lease(lease)
        svc.ledger.close()

"""VM disk backups: periods, pruning, scrubbing and refusals (real QEMU where it matters)."""

import os
import stat
from datetime import datetime

import pytest

from vmfixtures.backups import disks
from vmfixtures.errors import ConfigError, NotFound, PermissionDenied, VmfError
from vmfixtures.spec import VMSpec


@pytest.mark.parametrize("when, group_by, name", [
    (datetime(2026, 11, 22), "month", "2026-11"), (datetime(2026, 11, 22), "quarter", "2026-Q4"),
    (datetime(2026, 2, 1), "quarter", "2026-Q1"), (datetime(2026, 6, 30), "half-year", "2026-H1"),
    (datetime(2026, 7, 1), "half-year", "2026-H2"), (datetime(2026, 7, 1), "year", "2026")])
def test_period_names(when, group_by, name):
    assert disks.period_name(when, group_by) == name


def test_unknown_period_is_a_config_error():
    with pytest.raises(ConfigError, match="--group-by 'decade'"):
        disks.period_name(datetime(2026, 1, 1), "decade")


def test_prune_keeps_each_vms_newest_whole_chains(tmp_path):
    for vm, names in (("web", ["2026-09", "2026-10", "2026-11", "2026-11.2"]), ("db", ["2026-08"])):
        for i, name in enumerate(names):
            (tmp_path / vm / name).mkdir(parents=True)
            disks._save_meta(tmp_path / vm / name, {"vm": vm, "links": [{"file": "x", "kind": "full", "bytes": 1,
                                                                          "at": i}]})
    gone = disks.prune(tmp_path, 2)
    assert [g.name for g in gone] == ["2026-09", "2026-10"]
    assert sorted(p.name for p in (tmp_path / "web").iterdir()) == ["2026-11", "2026-11.2"]
    assert (tmp_path / "db" / "2026-08").is_dir()  # another VM's only chain is its newest
    with pytest.raises(ConfigError):
        disks.prune(tmp_path, 0)


def test_a_pattern_selects_running_vms_and_must_match_one():
    class Driver:
        def process(self, name):
            return name != "web-3"  # stopped

    names = ["web-1", "web-2", "web-3", "db"]
    assert disks.running_matches(lambda n: Driver(), names, "web-*") == ["web-1", "web-2"]
    with pytest.raises(NotFound, match="no running VM matches 'ghost-\\*'"):
        disks.running_matches(lambda n: Driver(), names, "ghost-*")
    assert disks.is_pattern("web-*") and not disks.is_pattern("web-1")


def test_restore_refuses_a_chain_with_a_missing_link(tmp_path):
    disks._save_meta(tmp_path, {"vm": "web", "links": [{"file": str(tmp_path / "full.qcow2"), "kind": "full",
                                                        "bytes": 1, "at": 0}]})
    with pytest.raises(VmfError, match="missing link"):
        disks.restore(tmp_path, tmp_path / "out.qcow2")
    assert not (tmp_path / "out.qcow2").exists()


@pytest.mark.vm
def test_unknown_vm_and_unwritable_destination(driver, tmp_path):
    with pytest.raises(NotFound):
        disks.backup(driver, "ghost", tmp_path / "bk")
    driver.create(VMSpec("web"))
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        os.system(f"chattr +i {ro}")
    else:
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(PermissionDenied, match="not writable"):
            disks.backup(driver, "web", ro)
    finally:
        os.system(f"chattr -i {ro}") if os.geteuid() == 0 else ro.chmod(0o755)


@pytest.mark.vm
def test_scrub_makes_the_next_backup_full(driver, tmp_path):
    driver.create(VMSpec("web"))
    assert disks.backup(driver, "web", tmp_path / "bk")["kind"] == "full"
    assert disks.backup(driver, "web", tmp_path / "bk")["kind"] == "incremental"
    assert len(disks.scrub(driver, "web")) == 2  # both checkpoints
    link = disks.backup(driver, "web", tmp_path / "bk")
    assert link["kind"] == "full"
    assert len(disks.chains(tmp_path / "bk")) == 2
    with pytest.raises(NotFound, match="no checkpoint 'vmfx.none'"):
        disks.scrub(driver, "web", "vmfx.none")

"""Product adapters: what a command's exit code and words mean, and the config each product reads."""

import yaml

from vmfixtures.sut import agsekit, reference
from vmfixtures.sut.base import (BAD_CONFIG, BUSY, CORRUPT, EXISTS, MISMATCH, MISSING_SOURCE, NOT_RUNNING,
                                 NOT_WRITABLE, UNKNOWN_VM)


def test_vmfixtures_outcomes_come_from_exit_codes_and_its_own_words():
    ok = reference.classify("backup-once", [], 0, "nothing changed since 2026...", "")
    assert ok.done and ok.note == "nothing-changed"
    missing = reference.classify("backup-once", [], 2, "", "vmfixtures: error: backup source /x does not exist or is not a folder")
    assert (missing.status, missing.refusal) == ("refused", MISSING_SOURCE)
    corrupt = reference.classify("backup-once", [], 1, "", "vmfixtures: error: corrupt snapshot /d/x in /d: ...")
    assert corrupt.refusal == CORRUPT
    assert reference.classify("x", [], 6, "", "backup destination /d is not writable: ...").refusal == NOT_WRITABLE
    assert reference.classify("x", [], 1, "", "something else broke").status == "failed"


def test_vmfixtures_outcomes_name_what_the_operator_is_told():
    same = reference.classify("create", [], 0, "VM 'b' already exists (running) with the same spec; nothing to do", "")
    assert (same.status, same.note, same.subject) == ("done", EXISTS, "b")
    mismatch = reference.classify("create", [], 4, "", "vmfixtures: error: VM 'b' already exists with a different "
                                  "spec; left untouched:\n  cpus: existing 1, requested 2\n  memory: existing 512M, "
                                  "requested 1G\n")
    assert mismatch.refused_for(MISMATCH, "b")
    assert mismatch.differences == {"cpus": ("1", "2"), "memory": ("512M", "1G")}
    bad = reference.classify("create", [], 2, "", "vmfixtures: error: /p/vmfixtures.yaml:4: vms.b.memory: '12 "
                             "parsecs' is not a size (use e.g. 512M or 2G)")
    assert bad.refused_for(BAD_CONFIG) and bad.where == ("/p/vmfixtures.yaml", 4) and bad.config_field == "vms.b.memory"
    port = reference.classify("portforward", [], 9, "", "vmfixtures: error: forward local 127.0.0.1:18080 -> d:8000: "
                              "host port 127.0.0.1:18080 is already in use by pid 42 (python)")
    assert port.refused_for(BUSY, "127.0.0.1:18080") and port.holder == 42


def test_vmfixtures_refusal_kinds_need_their_documented_exit_code():
    ghost = "vmfixtures: error: no VM named 'ghost' in /s (see `vmfixtures vm list`)"
    assert reference.classify("vm stop", [], 3, "", ghost).refused_for(UNKNOWN_VM, "ghost")
    assert reference.classify("vm stop", [], 1, "", ghost).status == "failed"
    # a config naming an unknown VM is a config error (exit 2), not an unknown VM
    field = "vmfixtures: error: /p/c.yaml:5: forwards[0].vm: no VM named 'ghost' under 'vms'"
    assert reference.classify("portforward", [], 2, "", field).refusal == BAD_CONFIG
    stopped = "vmfixtures: error: VM 'b' is not running; disk backups are taken from a running VM"
    assert reference.classify("vm backup", [], 8, "", stopped).refused_for(NOT_RUNNING, "b")
    assert reference.classify("vm backup", [], 1, "", stopped).status == "failed"


def test_vmfixtures_agent_runs_pass_the_agents_exit_code_through():
    ran = reference.classify_run("run", [], 3, "", "scribe: no such file\nvmfixtures: backups disabled for this run")
    assert ran.done and ran.data == {"exit_code": 3}
    refused = reference.classify_run("run", [], 2, "", "vmfixtures: error: /p/c.yaml: no agent named 'x' under 'agents'")
    assert refused.status == "refused"


def test_agsekit_tracebacks_are_failures_never_refusals():
    tb = "Traceback (most recent call last):\n ...\nPermissionError: [Errno 1] Operation not permitted: '/d/x-partial'"
    assert agsekit.classify("backup-once", [], 1, "", tb).status == "failed"
    missing = agsekit.classify("backup-once", [], 1, "", "Source directory does not exist: /abs/nosuch")
    assert (missing.status, missing.refusal) == ("refused", MISSING_SOURCE)
    assert agsekit.classify("backup-once", [], 0, "No changes detected since last backup; skipping new snapshot.",
                            "").note == "nothing-changed"


class _Project:
    def __init__(self, folder):
        self.folder = folder
        self.config_path = folder / "agsekit.yaml"


def test_agsekit_config_has_cpu_ram_disk_and_intervals_in_minutes(tmp_path, monkeypatch):
    monkeypatch.setattr(agsekit, "default_command", lambda: tmp_path / "agsekit")
    (tmp_path / "agsekit").write_text("")
    product = agsekit.Agsekit(_Project(tmp_path))
    text = product.render_config({"vms": {"builder": {"cpus": 2, "memory": "512M", "disk": "2G"}},
                                  "mounts": [{"source": "work", "target": "/work", "vm": "builder",
                                              "backup": "saved/work", "interval": 1}]})
    data = yaml.safe_load(text)
    assert data["vms"] == {"builder": {"cpu": 2, "ram": "512M", "disk": "2G"}}
    assert data["mounts"] == [{"source": "work", "target": "/work", "vm": "builder", "backup": "saved/work",
                               "interval": 1}]
    assert product.snapshot_name(__import__("datetime").datetime(2026, 1, 2, 3, 4, 5)) == "20260102-030405"

"""Product adapters: what a command's exit code and words mean, and the config each product reads."""

import yaml

from vmfixtures.sut import agsekit, reference
from vmfixtures.sut.base import CORRUPT, MISSING_SOURCE, NOT_WRITABLE


def test_vmfixtures_outcomes_come_from_exit_codes_and_its_own_words():
    ok = reference.classify("backup-once", [], 0, "nothing changed since 2026...", "")
    assert ok.done and ok.note == "nothing-changed"
    missing = reference.classify("backup-once", [], 2, "", "vmfixtures: error: backup source /x does not exist or is not a folder")
    assert (missing.status, missing.refusal) == ("refused", MISSING_SOURCE)
    corrupt = reference.classify("backup-once", [], 1, "", "vmfixtures: error: corrupt snapshot /d/x in /d: ...")
    assert corrupt.refusal == CORRUPT
    assert reference.classify("x", [], 6, "", "backup destination /d is not writable: ...").refusal == NOT_WRITABLE
    assert reference.classify("x", [], 1, "", "something else broke").status == "failed"


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

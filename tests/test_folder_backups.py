"""backup_once on real folders with real rsync."""


import pytest

from vmfixtures.backups.folders import backup_once, snapshots
from vmfixtures.errors import ConfigError, VmfError


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.txt").write_text("one\n")
    return d


def test_same_size_edit_within_the_same_second_is_not_missed(src, tmp_path):
    backup_once(src, tmp_path / "bk")
    (src / "a.txt").write_text("two\n")  # same size, same second: rsync's default quick check misses it
    result = backup_once(src, tmp_path / "bk")
    assert result.changed and (result.snapshot / "a.txt").read_text() == "two\n"


def test_destination_inside_the_source_is_refused(src):
    with pytest.raises(ConfigError, match="lies inside its source"):
        backup_once(src, src / "backups")


def test_failed_rsync_leaves_no_partial_and_keeps_snapshots(src, tmp_path, monkeypatch):
    first = backup_once(src, tmp_path / "bk").snapshot
    (src / "b.txt").write_text("new\n")
    from vmfixtures.backups import folders

    real = folders._rsync
    monkeypatch.setattr(folders, "_rsync", lambda args: real(args) if "--dry-run" in args else real(["--bogus-option"]))
    with pytest.raises(VmfError, match="failed \\(rsync exit"):
        backup_once(src, tmp_path / "bk")
    assert snapshots(tmp_path / "bk") == [first]
    assert not list((tmp_path / "bk").glob("*-partial"))


def test_vanished_files_are_a_warning_naming_them(src, tmp_path, monkeypatch):
    from vmfixtures.backups import folders

    real = folders._rsync

    def rsync(args):
        r = real(args)
        if "--dry-run" not in args:
            r.returncode, r.stderr = 24, 'file has vanished: "/src/gone.txt"\nrsync warning: some files vanished\n'
        return r
    monkeypatch.setattr(folders, "_rsync", rsync)
    result = backup_once(src, tmp_path / "bk")
    assert result.changed and result.warnings and "/src/gone.txt" in result.warnings[0]

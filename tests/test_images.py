"""Image builder: refusals leave no trace in the cache; the cache key tracks every input."""

import os
import stat
from pathlib import Path

import pytest

from vmfixtures import images, keys
from vmfixtures.errors import MissingDependency, PermissionDenied, VmfError
from vmfixtures.images import builder
from vmfixtures.images.recipe import Recipe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMFIXTURES_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VMFIXTURES_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "cache"


def cache_entries(cache: Path) -> list[str]:
    d = cache / "images"
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.exists() else []


def test_not_root_is_refused(cache, monkeypatch):
    # As uid 1000 would have it: its own key, in a folder it owns (private folders are checked against geteuid).
    folder = keys.ensure_keypair().parent
    for path in (folder, *folder.iterdir()):
        os.chown(path, 1000, 1000)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionDenied, match="needs root"):
        images.build(Recipe(), quiet=True)
    assert cache_entries(cache) == []


def test_missing_mmdebstrap_names_the_package(cache, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingDependency, match="Debian package 'mmdebstrap'"):
        images.build(Recipe(), quiet=True)
    assert cache_entries(cache) == []


def test_no_disk_space_is_refused(cache, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(builder, "MIN_FREE_BYTES", 2**62)
    monkeypatch.setattr(builder.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(VmfError, match="not enough disk space"):
        images.build(Recipe(), quiet=True)
    assert cache_entries(cache) == []


def test_unreachable_mirror_leaves_no_partial_image(cache, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(builder.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(VmfError, match="mirror unreachable: http://127.0.0.1:9/debian"):
        images.build(Recipe(), mirror="http://127.0.0.1:9/debian", quiet=True)
    assert cache_entries(cache) == []


def test_failed_build_removes_its_partial_folder(cache, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(builder.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(builder, "_check_mirror", lambda mirror, suite: None)
    monkeypatch.setattr(builder, "TOOLS", {})
    original = builder._run

    def failing_mmdebstrap(cmd, progress, what, **kw):
        assert cmd[0] == "mmdebstrap"
        (Path(cmd[-2]) / "half-written").parent.mkdir(parents=True)
        (Path(cmd[-2]) / "half-written").write_text("x")
        original(["sh", "-c", "echo 'E: simulated download failure'; exit 1"], progress, what)

    monkeypatch.setattr(builder, "_run", failing_mmdebstrap)
    with pytest.raises(VmfError, match="(?s)mmdebstrap failed .*simulated download failure"):
        images.build(Recipe(), mirror="http://mirror.invalid/debian", quiet=True)
    assert cache_entries(cache) == []


def test_cache_hit_runs_nothing(cache, monkeypatch):
    final = cache / "images" / f"debian-12-{Recipe().key(keys.public_key())}"
    final.mkdir(parents=True)
    (final / "image.json").write_text('{"name": "debian-12", "key": "k"}')
    monkeypatch.setattr(builder, "_preflight", lambda: pytest.fail("a cache hit must not check or build anything"))
    assert images.build(Recipe(), quiet=True).dir == final
    assert images.find(Recipe()).dir == final


def test_cache_key_follows_recipe_and_key(cache):
    base = Recipe().key("ssh-ed25519 AAAA one")
    assert Recipe().key("ssh-ed25519 AAAA one") == base
    assert Recipe().key("ssh-ed25519 AAAA two") != base
    assert Recipe(packages=("openssh-server",)).key("ssh-ed25519 AAAA one") != base


def test_remove_unknown_image_is_an_error(cache):
    with pytest.raises(VmfError, match="no cached image matches 'nope'"):
        images.remove("nope")


def test_module_order_puts_dependencies_first(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/virtio_blk.ko: kernel/virtio_ring.ko kernel/virtio.ko\n"
        "kernel/virtio_ring.ko: kernel/virtio.ko\nkernel/virtio.ko:\nkernel/fuse.ko:\n")
    (tmp_path / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    order = builder._module_order(tmp_path, ("virtio_blk", "ext4", "fuse"))
    assert order == ["kernel/virtio.ko", "kernel/virtio_ring.ko", "kernel/virtio_blk.ko", "kernel/fuse.ko"]
    with pytest.raises(VmfError, match="'nope' is neither built in"):
        builder._module_order(tmp_path, ("nope",))


def test_keypair_is_private_and_stable(cache):
    path = keys.ensure_keypair()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.ensure_keypair() == path
    assert keys.public_key().startswith("ssh-ed25519 ")
    os.chmod(path, 0o644)
    keys.ensure_keypair()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

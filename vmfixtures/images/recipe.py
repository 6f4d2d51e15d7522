"""What goes into a guest image. The cache key is a hash of all of it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from importlib import resources

# Guest architectures a recipe exists for (the kernel package and the guest files are amd64's).
# Outside the Recipe on purpose: a field there would change every image's cache key.
ARCHS = ("x86_64",)
GUEST_FILES = ("initramfs-init", "inittab", "vmf-boot", "vmf-shutdown", "acpi-power-button", "sshd_config",
               "vmf-ssh-socket")


@dataclass(frozen=True)
class Recipe:
    """A Debian guest: suite, packages, the modules its initramfs loads, disk size."""

    name: str = "debian-12"
    suite: str = "bookworm"
    kernel_package: str = "linux-image-cloud-amd64"
    packages: tuple[str, ...] = (
        "openssh-server", "qemu-guest-agent", "sshfs", "rsync", "python3", "python3-pip", "iproute2",
        "busybox-static", "kmod", "e2fsprogs",
        # Satisfies the kernel's initramfs-tool dependency in ~1 s; we ship our own initrd.
        "tiny-initramfs",
    )
    # Loaded by the initramfs, dependencies first (resolved from modules.dep).
    modules: tuple[str, ...] = (
        "virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng",
        "button", "evdev", "fuse",
    )
    # The initramfs's copies of the modules go without their signatures (images/modsig.py: ~0.2 s of each
    # boot under TCG). The modules on the root file system stay signed.
    unsigned_initramfs_modules: bool = True
    disk_size: str = "2G"
    kernel_format: str = "pvh-elf"  # the kernel unpacked at build for QEMU's PVH entry; "bzimage" keeps it packed
    init: str = "busybox"  # "systemd" is a possible future recipe; not built yet

    def guest_file(self, name: str) -> bytes:
        return resources.files("vmfixtures.images").joinpath("guest", name).read_bytes()

    def key(self, public_key: str) -> str:
        """Hash of the recipe, the guest files and the key baked into the image."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for name in GUEST_FILES:
            h.update(name.encode() + b"\0" + self.guest_file(name))
        h.update(public_key.encode())
        return h.hexdigest()[:12]


def default_recipe() -> Recipe:
    return Recipe()

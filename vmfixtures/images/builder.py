"""Build a guest image: mmdebstrap rootfs -> tiny initramfs + kernel + qcow2 base.

The result lives in ``<cache>/images/<name>-<key>/`` and is only ever created
by renaming a finished ``.partial`` folder, so the cache never holds half an
image: a failed or interrupted build leaves nothing behind but its partial
folder, which the next build removes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import keys, paths
from ..errors import MissingDependency, NotFound, PermissionDenied, VmfError
from ..progress import Progress
from ..sizes import parse_size
from . import modsig
from .kernel import write_vmlinux
from .mirror import resolve_mirror
from .recipe import Recipe

TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils", "cpio": "cpio"}
MIN_FREE_BYTES = 3 * 1024**3
INITRAMFS_APPLETS = ("sh", "mount", "umount", "mkdir", "cat", "insmod", "usleep", "switch_root", "poweroff")
DROPPED_PATHS = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*")


@dataclass
class Image:
    """A built guest image: kernel, initrd and a qcow2 base disk."""

    dir: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.dir / "image.json").read_text())

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def kernel(self) -> Path:
        """The uncompressed PVH kernel when the build made one (boots faster), else the bzImage."""
        elf = self.dir / "vmlinux"
        return elf if elf.exists() else self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.dir / "base.qcow2"

    @property
    def host_key(self) -> str:
        """The guest's SSH host key (public), to pin instead of trusting on first use."""
        return (self.dir / "ssh_host_ed25519_key.pub").read_text().strip()

    @property
    def disk_bytes(self) -> int:
        return int(self.meta["disk_bytes"])


def _image_dir(recipe: Recipe, key: str) -> Path:
    return paths.images_dir() / f"{recipe.name}-{key}"


def find(recipe: Recipe) -> Image | None:
    """The cached image for ``recipe``, or None."""
    d = _image_dir(recipe, recipe.key(keys.public_key()))
    return Image(d) if (d / "image.json").is_file() else None


def list_images() -> list[Image]:
    root = paths.images_dir()
    if not root.is_dir():
        return []
    return [Image(d) for d in sorted(root.iterdir()) if (d / "image.json").is_file()]


def remove(*idents: str) -> list[Path]:
    """Remove cached images whose folder name, recipe name or key is one of ``idents``; when one
    matches nothing, nothing is removed."""
    cached = list_images()
    gone = []
    for ident in idents:
        matched = [img.dir for img in cached if ident in (img.dir.name, img.name, img.key)]
        if not matched:
            raise NotFound(f"no cached image matches '{ident}' (see `vmfixtures image list`); nothing removed")
        gone += [d for d in matched if d not in gone]
    for d in gone:
        shutil.rmtree(d)
    return gone


def build(recipe: Recipe, mirror: str | None = None, force: bool = False, quiet: bool = False) -> Image:
    """Return the image for ``recipe``, building it unless it is cached."""
    progress = Progress(f"image {recipe.name}", quiet)
    key = recipe.key(keys.public_key())
    final = _image_dir(recipe, key)
    if (final / "image.json").is_file() and not force:
        progress.step(f"cache hit {final}")
        return Image(final)
    _preflight()
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same recipe waits here
        if (final / "image.json").is_file() and not force:
            progress.step(f"cache hit {final} (built meanwhile)")
            return Image(final)
        _remove_stale_partials(final)
        mirror = resolve_mirror(recipe.suite, mirror)
        _check_mirror(mirror, recipe.suite)
        work = final.with_name(f"{final.name}.partial-{os.getpid()}")
        try:
            _build_into(recipe, key, mirror, work, progress)
            if final.exists():
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    progress.step(f"done in {progress.elapsed():.0f}s -> {final}")
    return Image(final)


def _preflight() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied(
            "building a guest image needs root: mmdebstrap must create device nodes and "
            "root-owned files (run `sudo vmfixtures image build`)"
        )
    for tool, package in TOOLS.items():
        if not shutil.which(tool):
            raise MissingDependency(f"'{tool}' not found: install the Debian package '{package}'")
    root = paths.images_dir()
    probe = root if root.exists() else next(p for p in root.parents if p.exists())
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        raise VmfError(
            f"not enough disk space in {probe}: {free / 1024**3:.1f} GiB free, "
            f"an image build needs {MIN_FREE_BYTES / 1024**3:.0f} GiB"
        )


def _check_mirror(mirror: str, suite: str) -> None:
    url = f"{mirror}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise VmfError(f"Debian mirror unreachable: {url}: {exc} (choose another with --mirror)") from None


def _remove_stale_partials(final: Path) -> None:
    for partial in final.parent.glob(f"{final.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(partial, ignore_errors=True)


def _run(cmd: list[str], progress: Progress, what: str, **kw) -> None:
    """Run ``cmd``, echoing its output as progress; fail with the tail of its log."""
    tail: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    assert proc.stdout
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-15:]
        if line.startswith("I: ") or line.startswith("E: "):
            progress.step(line[3:])
    if proc.wait() != 0:
        raise VmfError(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))


def _build_into(recipe: Recipe, key: str, mirror: str, work: Path, progress: Progress) -> None:
    rootfs = work / "rootfs"
    work.mkdir(parents=True)
    progress.step(f"mmdebstrap {recipe.suite} from {mirror}")
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase",
           "--include=" + ",".join((recipe.kernel_package, *recipe.packages))]
    cmd += [f"--dpkgopt=path-exclude={p}" for p in DROPPED_PATHS]
    _run(cmd + [recipe.suite, str(rootfs), mirror], progress, "mmdebstrap")

    kver = _kernel_version(rootfs)
    progress.step(f"kernel {kver}; writing the fast init and the installation key")
    _customize(recipe, rootfs)
    shutil.copy2(rootfs / "boot" / f"vmlinuz-{kver}", work / "vmlinuz")
    if recipe.kernel_format == "pvh-elf":
        why_not = write_vmlinux(work / "vmlinuz", work / "vmlinux")
        progress.step("kernel unpacked for PVH boot (vmlinux)" if why_not is None else
                      f"kernel kept compressed ({why_not}): boots ~0.25 s slower under TCG")
    shutil.copy2(rootfs / "etc/ssh/ssh_host_ed25519_key.pub", work / "ssh_host_ed25519_key.pub")

    progress.step("building the initramfs")
    modules = _build_initramfs(recipe, rootfs, kver, work)

    size = parse_size(recipe.disk_size, "recipe.disk_size")
    (rootfs / "etc/vmfixtures").mkdir(exist_ok=True)
    (rootfs / "etc/vmfixtures/base-sectors").write_text(f"{size // 512}\n")
    progress.step(f"ext4 root file system ({recipe.disk_size}) -> qcow2")
    raw = work / "base.raw"
    _run(["mkfs.ext4", "-q", "-F", "-L", "vmfroot", "-d", str(rootfs), str(raw), f"{size // 1024}k"], progress, "mkfs.ext4")
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "base.qcow2")], progress, "qemu-img convert")
    raw.unlink()
    shutil.rmtree(rootfs)
    meta = {
        "name": recipe.name, "key": key, "suite": recipe.suite, "kernel": kver, "modules": modules,
        "mirror": mirror, "disk_bytes": size, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_seconds": round(progress.elapsed(), 1),
    }
    (work / "image.json").write_text(json.dumps(meta, indent=2) + "\n")


def _kernel_version(rootfs: Path) -> str:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise VmfError(f"no kernel found in {rootfs}/boot after mmdebstrap")
    return kernels[-1].name.removeprefix("vmlinuz-")


def _customize(recipe: Recipe, rootfs: Path) -> None:
    def put(rel: str, data: bytes, mode: int = 0o644) -> None:
        target = rootfs / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, mode)

    put("/etc/inittab", recipe.guest_file("inittab"))
    put("/usr/local/sbin/vmf-boot", recipe.guest_file("vmf-boot"), 0o755)
    put("/usr/local/sbin/vmf-shutdown", recipe.guest_file("vmf-shutdown"), 0o755)
    put("/usr/local/sbin/vmf-ssh-socket", recipe.guest_file("vmf-ssh-socket"), 0o755)
    put("/etc/acpi/PWRF/00000080", recipe.guest_file("acpi-power-button"), 0o755)
    put("/etc/ssh/sshd_config.d/vmfixtures.conf", recipe.guest_file("sshd_config"))
    put("/root/.ssh/authorized_keys", (keys.public_key() + "\n").encode(), 0o600)
    os.chmod(rootfs / "root/.ssh", 0o700)
    put("/etc/hostname", b"vmfixtures\n")
    put("/etc/hosts", b"127.0.0.1 localhost\n")
    put("/etc/fstab", b"# root is mounted by the vmfixtures initramfs\n")
    init = rootfs / "sbin/init"
    if init.exists() or init.is_symlink():
        init.unlink()
    init.symlink_to("/bin/busybox")
    for applet in ("acpid",):  # run under their own names, so killall/pgrep find them
        (rootfs / "usr/local/sbin" / applet).symlink_to("/bin/busybox")
    for stale in (rootfs / "boot").glob("initrd.img-*"):
        stale.unlink()  # tiny-initramfs' generic one; ours is built below


def _module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Module files for ``wanted`` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    builtin = {Path(l).name.split(".ko")[0].replace("-", "_")
               for l in (modules_dir / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(mod: str) -> None:
        for dep in deps.get(mod, []):
            visit(dep)
        if mod not in order:
            order.append(mod)

    for name in wanted:
        if name in builtin:
            continue
        if name not in by_name:
            raise VmfError(f"kernel module '{name}' is neither built in nor in {modules_dir}")
        visit(by_name[name])
    return order


def _build_initramfs(recipe: Recipe, rootfs: Path, kver: str, work: Path) -> list[str]:
    modules_dir = rootfs / "lib/modules" / kver
    order = _module_order(modules_dir, recipe.modules)
    tree = work / "initramfs"
    for sub in ("bin", "dev", "proc", "modules", "newroot"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(rootfs / "bin/busybox", tree / "bin/busybox")
    for applet in INITRAMFS_APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    for mod in order:
        data = (modules_dir / mod).read_bytes()
        if recipe.unsigned_initramfs_modules:
            try:
                data = modsig.strip_signature(data)
            except ValueError as e:
                raise VmfError(f"{modules_dir / mod}: {e}") from None
        (tree / "modules" / Path(mod).name).write_bytes(data)
    (tree / "modules.order").write_text("\n".join(Path(m).name for m in order) + "\n")
    (tree / "init").write_bytes(recipe.guest_file("initramfs-init"))
    os.chmod(tree / "init", 0o755)
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    with open(work / "initrd.img", "wb") as out:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                       input="\n".join(files).encode(), stdout=out, check=True)
    shutil.rmtree(tree)
    return [Path(m).name for m in order]

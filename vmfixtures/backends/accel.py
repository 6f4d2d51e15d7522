"""Pick KVM or TCG by a probe boot with a deadline, and measure machine speed.

``/dev/kvm`` can exist and answer ioctls while guests hang (nested setups
without vmx/svm), so presence proves nothing: we boot the image's kernel
with ``vmf.probe`` (the initramfs prints one line and powers off) under KVM
with a deadline. The TCG probe time is the machine's speed yardstick that
every timeout is scaled by. Results are cached per host boot.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import paths
from ..errors import MissingDependency
from ..files import write_atomically

PROBE_LINE = b"vmfixtures: probe ok"
KVM_DEADLINE = 15.0
# Both probes run at once; a KVM that works boots well before TCG does. Once TCG has finished, KVM
# gets this many times TCG's time (at least KVM_GRACE_MIN seconds) before it counts as hanging.
KVM_AFTER_TCG = 2.0
KVM_GRACE_MIN = 4.0
TCG_DEADLINE = 120.0
QEMU = "qemu-system-x86_64"


# cryptomgr.notests: no boot-time self-tests of the kernel's crypto algorithms (0.23 s under TCG).
KERNEL_ARGS = "console=ttyS0 root=/dev/vda rw quiet panic=-1 cryptomgr.notests"
# q35, not pc: enabling each PCI device makes Linux evaluate the root bridge's _PRT, which pc's ACPI
# tables compute in a 128-step AML loop (0.1-0.16 s per device under TCG, ~0.6 s of every boot); q35's
# is a constant package. No SATA, SMBus or PS/2 controller: nothing here uses them, and each is probed.
MACHINE = "q35,sata=off,smbus=off,i8042=off"
# Under TCG every instruction of a boot is emulated, so these leave out work the tests never need.
# Each costs the guest some hardening or tooling inside itself, never the host boundary; under KVM
# the guest keeps all of it. Figures: alternated boots on this 2-core machine.
TCG_KERNEL_ARGS = (
    # TCG caches translated code by virtual address: with randomised mappings each process translated
    # its libraries again (exec of /bin/true 25 -> 6 ms, perl 73 -> 17 ms).
    "norandmaps",
    # Linux measures the local APIC timer against the PIT for 100 ms, and TCG's CPU has no
    # TSC-deadline timer that would skip it; the HPET ticks instead.
    "nolapic_timer",
    # On one vCPU the kernel rewrote its ~9,000 LOCK prefixes (0.14 s); an SMP kernel keeps them anyway.
    "noreplace-smp",
    # Debian's kernel zeroes every page it allocates: a memset per page, emulated (~0.1 s of a boot).
    "init_on_alloc=0",
    # The tracing file system (its thousands of event directories, kprobe and printk exports) and
    # the CTR-KDF self-test: ~0.15 s of initcalls; nothing in a test guest traces its kernel.
    "initcall_blacklist=tracer_init_tracefs,init_kprobe_trace,init_trace_printk_function_export,"
    "crypto_kdf108_init",
)


@dataclass
class Accel:
    """The accelerator in use, why, and how long a probe boot took."""

    name: str  # "kvm" or "tcg"
    reason: str
    probe_seconds: float  # boot-to-probe-line with the chosen accelerator

    def kernel_args(self, hostname: str) -> str:
        """The guest kernel's command line; under TCG with ``TCG_KERNEL_ARGS`` too."""
        tcg = " " + " ".join(TCG_KERNEL_ARGS) if self.name == "tcg" else ""
        return KERNEL_ARGS + tcg + f" vmf.hostname={hostname}"

    def scale(self, base: float) -> float:
        """A timeout of ``base`` seconds on a machine where a probe boot takes 4 s."""
        return base * max(1.0, self.probe_seconds / 4.0)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def probe_boot(accel: str, kernel: Path, initrd: Path, deadline: float, give_up=None) -> float | None:
    """Seconds until the probe line under ``accel``, or None past ``deadline`` (or once
    ``give_up(seconds so far)`` says so)."""
    cmd = [QEMU, "-machine", f"{MACHINE},accel={accel}", "-m", "128", "-nodefaults", "-no-user-config",
           "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
           "-initrd", str(initrd), "-append", "console=ttyS0 quiet panic=-1 vmf.probe"]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise MissingDependency(f"'{QEMU}' not found: install the Debian package 'qemu-system-x86'") from None
    try:
        while True:
            elapsed = time.monotonic() - start
            try:
                out = proc.communicate(timeout=min(0.1, max(0.0, deadline - elapsed)))[0]
                return time.monotonic() - start if PROBE_LINE in out else None
            except subprocess.TimeoutExpired:
                if time.monotonic() - start >= deadline or (give_up and give_up(time.monotonic() - start)):
                    return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def choose(kernel: Path, initrd: Path, refresh: bool = False) -> Accel:
    """KVM when a probe boot under KVM finishes in time, else TCG. Cached per host boot."""
    forced = os.environ.get("VMFIXTURES_ACCEL")
    cache = paths.cache_dir() / "accel.json"
    key = {"boot_id": _boot_id(), "kernel": str(kernel), "forced": forced}
    if not refresh and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return Accel(**saved["accel"])
        except (ValueError, TypeError, KeyError):
            pass  # a corrupt cache is re-probed
    accel = _probe(kernel, initrd, forced)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache, json.dumps({"key": key, "accel": asdict(accel)}))
    return accel


def _probe(kernel: Path, initrd: Path, forced: str | None) -> Accel:
    if forced not in (None, "", "kvm", "tcg"):
        raise MissingDependency(f"VMFIXTURES_ACCEL={forced!r}: use 'kvm' or 'tcg'")
    if forced == "tcg":
        return Accel("tcg", "forced by VMFIXTURES_ACCEL=tcg", _tcg_seconds(kernel, initrd))
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        reason = "/dev/kvm is absent or not accessible"
        if forced == "kvm":
            raise MissingDependency(f"VMFIXTURES_ACCEL=kvm but {reason}")
        return Accel("tcg", reason, _tcg_seconds(kernel, initrd))
    with ThreadPoolExecutor(1) as pool:  # TCG's probe beside KVM's: it is the yardstick either way
        tcg = pool.submit(probe_boot, "tcg", kernel, initrd, TCG_DEADLINE)

        def kvm_hangs(elapsed: float) -> bool:
            done = tcg.done() and tcg.result()
            return bool(done) and elapsed > max(KVM_GRACE_MIN, KVM_AFTER_TCG * done) and forced != "kvm"

        seconds = probe_boot("kvm", kernel, initrd, KVM_DEADLINE, give_up=kvm_hangs)
        tcg_seconds = tcg.result()
    if seconds is not None:
        return Accel("kvm", "KVM probe boot finished", round(seconds, 2))
    waited = KVM_DEADLINE if forced == "kvm" or not tcg_seconds else max(KVM_GRACE_MIN, KVM_AFTER_TCG * tcg_seconds)
    reason = (f"/dev/kvm exists but a KVM probe boot did not finish within {waited:.0f}s"
              + (f" (TCG's took {tcg_seconds:.1f}s)" if tcg_seconds else ""))
    if forced == "kvm":
        raise MissingDependency(f"VMFIXTURES_ACCEL=kvm but {reason}")
    if tcg_seconds is None:
        raise MissingDependency(f"even a TCG probe boot of {kernel} did not finish within {TCG_DEADLINE:.0f}s")
    return Accel("tcg", reason, round(tcg_seconds, 2))


def _tcg_seconds(kernel: Path, initrd: Path) -> float:
    seconds = probe_boot("tcg", kernel, initrd, TCG_DEADLINE)
    if seconds is None:
        raise MissingDependency(f"even a TCG probe boot of {kernel} did not finish within {TCG_DEADLINE:.0f}s")
    return round(seconds, 2)

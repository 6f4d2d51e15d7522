"""Templated snapshots on real QEMU: the RAM beside a small stream, clones sharing it copy-on-write."""

import json
import time
from pathlib import Path

import pytest

from vmfixtures.daemon.pool import pool_key
from vmfixtures.errors import Mismatch
from vmfixtures.spec import VMSpec

pytestmark = pytest.mark.vm


def test_a_template_is_another_kind_of_snapshot():
    spec = VMSpec("x")
    assert pool_key(spec, "img") != pool_key(spec, "img", template=True)
    assert pool_key(spec, "img") == pool_key(VMSpec("y"), "img")  # the name is not part of it


# The guest kernel's base random-generator key, read from its own memory (/proc/kcore at the address
# /proc/kallsyms gives base_crng). Only a reseed changes it, so unlike drawn numbers it cannot drift
# apart between clones by itself: kernel threads drawing in a different order move only per-CPU keys.
BASE_KEY = r"""
import struct, sys
addr = next((int(a, 16) for a, _, n in (l.split()[:3] for l in open("/proc/kallsyms")) if n == "base_crng"), 0)
if not addr:
    sys.exit("base_crng has no address in /proc/kallsyms")
with open("/proc/kcore", "rb") as f:
    head = f.read(64)
    (phoff,) = struct.unpack_from("<Q", head, 0x20)
    size, count = struct.unpack_from("<HH", head, 0x36)
    f.seek(phoff)
    table = f.read(size * count)
    for i in range(count):
        kind, _, offset, vaddr, _, _, memsz, _ = struct.unpack_from("<IIQQQQQQ", table, i * size)
        if kind == 1 and vaddr <= addr < vaddr + memsz:
            f.seek(offset + addr - vaddr)
            print(f.read(32).hex())
            break
    else:
        sys.exit("base_crng is in no segment of /proc/kcore")
"""


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_clones_map_the_template_ram_privately_and_differ(driver, tmp_path):
    driver.create(VMSpec("tmpl"), template=True)
    snap = driver.snapshot("tmpl", tmp_path / "snap")
    ram = snap / driver.RAM_FILE
    assert ram.stat().st_size == VMSpec("tmpl").memory, "expected the whole guest RAM in the template's file"
    assert (snap / driver.MEMORY_FILE).stat().st_size < 8 * 1024**2, "expected device state only in the stream"
    assert json.loads((snap / "snapshot.json").read_text())["ram"] == driver.RAM_FILE
    assert not driver.vm_dir("tmpl").exists(), "expected the template VM's folder gone with the snapshot"

    seen, keys = {}, {}
    for name in ("c1", "c2"):
        m = driver.wait_restored(name, driver.create_from_snapshot(VMSpec(name), snap))
        # First, while the key the template saved is still young: the guest kernel rekeys by itself on
        # the first draw after about half its uptime, and then only the helper's reseed tells clones apart.
        keys[name] = m.succeed(["python3", "-c", BASE_KEY]).strip()
        pid = driver.process(name).pid
        backend = next(a for a in _cmdline(pid) if a.startswith("memory-backend-file"))
        assert f"mem-path={ram.resolve()}" in backend and "share=off" in backend, backend
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert str(ram.resolve()) in maps, f"expected QEMU pid {pid} to map {ram}"
        guest_now = float(m.succeed("date +%s.%N"))
        assert abs(guest_now - time.time()) < 2.0, f"expected the clone's clock set, it is {guest_now - time.time():+.1f}s off"
        seen[name] = (m.succeed("hostname").strip(), m.succeed("head -c 16 /dev/urandom | od -An -tx1").strip())
    assert seen["c1"][0] == "c1" and seen["c2"][0] == "c2", seen
    assert seen["c1"][1] != seen["c2"][1], f"expected clones to draw different random numbers: {seen}"
    assert len(keys["c1"]) == 64 and keys["c1"] != keys["c2"], f"expected each clone reseeded, keys: {keys}"

    m = driver.machine("c1")  # a clone's own snapshot (whole private RAM, same capabilities) restores
    m.succeed("echo mine > /root/note")
    driver.save_vm_snapshot("c1", "s")
    m.succeed("rm /root/note")
    assert driver.restore_vm_snapshot("c1", "s").succeed("cat /root/note").strip() == "mine"

    # A snapshot an earlier build saved on the pc machine is refused by name, and the VM runs on as it was.
    info = driver.vm_dir("c1") / "snapshots" / "s" / "snapshot.json"
    saved = json.loads(info.read_text())
    assert saved["machine"].startswith("q35"), saved
    del saved["machine"]
    info.write_text(json.dumps(saved))
    before = driver.process_id("c1")
    with pytest.raises(Mismatch, match="saved on the machine 'pc'"):
        driver.restore_vm_snapshot("c1", "s")
    assert driver.process_id("c1") == before, "expected the VM left running, the same process"
    assert driver.machine("c1").succeed("cat /root/note").strip() == "mine"


def test_a_clone_whose_helper_is_gone_is_freshened_the_slow_way(driver, tmp_path):
    driver.create(VMSpec("tmpl2"))
    snap = driver.snapshot("tmpl2", tmp_path / "snap")
    assert json.loads((snap / "snapshot.json").read_text())["freshen"], "expected the clone helper recorded"
    m = driver.wait_restored("c3", driver.create_from_snapshot(VMSpec("c3"), snap))
    assert "vmfixtures-freshen" in m.succeed("ps -eo args"), "expected the clone helper waiting in the clone"
    m.succeed("pkill -f 'vmfixtures-fresh[e]n'")  # the bracket keeps pkill off its own shell
    m.succeed("date -s @1000000000 >/dev/null; hostname elsewhere")
    driver.personalize(m)
    assert m.succeed("hostname").strip() == "c3"
    assert abs(float(m.succeed("date +%s.%N")) - time.time()) < 2.0, "expected the clock set without the helper"

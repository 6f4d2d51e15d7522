#!/usr/bin/env python3
"""Cold boot-to-ready time and guest command round-trip, p50/p95 over N runs.

Baselines measured in the same run:
- boot: a bare probe boot (kernel + initramfs, power off at once) is the floor
  the full boot is compared with;
- commands: one SSH connection per command (what `ssh host cmd` costs) is the
  baseline for the guest agent and for one reused SSH connection.

    python bench/boot.py [--boots 5] [--commands 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmfixtures.backends import accel as accel_mod  # noqa: E402
from vmfixtures.backends.qemu import QemuBackend  # noqa: E402
from vmfixtures.spec import VMSpec  # noqa: E402

TARGET_BOOT_S = 2.0  # issue 15 (the first round's target was 8 s)
TARGET_COMMAND_MS = 25.0  # issue 15: `echo hi` in argv form (the first round's: 100 ms)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def row(label: str, values: list[float], unit: str, scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"  {label:<34} p50 {pct(v, 50):8.1f} {unit}   p95 {pct(v, 95):8.1f} {unit}   (n={len(v)})"


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--boots", type=int, default=5, help="cold boots to time (default 5)")
    ap.add_argument("--commands", type=int, default=30, help="commands per channel (default 30)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="vmfx-bench-") as tmp:
        driver = QemuBackend(storage=Path(tmp) / "vms", quiet=True)
        img = driver.image()
        acc = driver.accel()
        print(f"accelerator: {acc.name} ({acc.reason})")

        probe = [accel_mod.probe_boot(acc.name, img.kernel, img.initrd, 120) for _ in range(args.boots)]
        boots = []
        try:
            driver.create(VMSpec(name="bench"), start=False)
            for _ in range(args.boots):
                t = time.perf_counter()
                driver.start("bench")
                boots.append(time.perf_counter() - t)
                driver.stop("bench")
            m = driver.start("bench")
            m.succeed("true")  # warm the agent connection
            agent_sh = timed(lambda: m.succeed("echo hi"), args.commands)
            agent_argv = timed(lambda: m.succeed(["/bin/echo", "hi"]), args.commands)
            ssh_once = timed(lambda: m.ssh.run_once("echo hi"), max(3, args.commands // 3))
            m.ssh.run("true")  # open the shared connection outside the timing
            ssh_reused = timed(lambda: m.ssh.run("echo hi"), args.commands)
            m.close()
        finally:
            for name in driver.names():
                driver.destroy(name)

    print("boot (process start -> ready line on the console):")
    print(row("probe boot (kernel+initramfs only)", [p for p in probe if p], "s"))
    print(row("boot to ready", boots, "s"))
    print(f"  userland overhead over the probe floor: x{pct(boots, 50) / pct([p for p in probe if p], 50):.2f}")
    print("guest command round-trip (`echo hi`):")
    print(row("ssh, one connection per command", ssh_once, "ms", 1000))
    print(row("ssh, one reused connection", ssh_reused, "ms", 1000))
    print(row("guest agent, sh -c", agent_sh, "ms", 1000))
    print(row("guest agent, argv (no shell)", agent_argv, "ms", 1000))
    base = pct(ssh_once, 50)
    print(f"  speed-up over ssh-per-command: agent x{base / pct(agent_sh, 50):.1f}, "
          f"reused ssh x{base / pct(ssh_reused, 50):.1f}")
    ok_boot = pct(boots, 50) <= TARGET_BOOT_S
    ok_cmd = pct(agent_argv, 50) * 1000 <= TARGET_COMMAND_MS
    # the measured value again, unrounded: "2.0 s ... MISSED" (2.04 s) read as a contradiction
    print(f"targets: boot p50 <= {TARGET_BOOT_S:.0f}s {'MET' if ok_boot else 'MISSED'} ({pct(boots, 50):.2f}s); "
          f"agent command (argv) p50 <= {TARGET_COMMAND_MS:.0f}ms {'MET' if ok_cmd else 'MISSED'} "
          f"({pct(agent_argv, 50) * 1000:.1f}ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""File transfer into and out of a guest: the guest agent's file calls against SFTP.

Why `vmfixtures cp` uses SFTP: both stream (a file is never held whole), but
the agent carries every chunk as base64 in a JSON line that qemu-ga decodes in
emulated code. This prints MB/s of each channel and direction on one VM, and
the peak memory (the kernel's VmHWM) of `vmfixtures cp` for a small and a
large file.

    python bench/transfer.py [--mib 32] [--backend qemu|libvirt]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmfixtures.backends import open_backend
from vmfixtures.guest.files import download, upload
from vmfixtures.spec import VMSpec
from vmfixtures.sut.host import Host


def agent_write(agent, src: Path, path: str, chunk: int) -> None:
    with agent.session(120):
        handle = agent.call("guest-file-open", timeout=60, path=path, mode="w")
        with open(src, "rb") as f:
            while block := f.read(chunk):
                agent.call("guest-file-write", timeout=60, handle=handle, **{"buf-b64": base64.b64encode(block).decode()})
        agent.call("guest-file-close", handle=handle)


def agent_read(agent, path: str, chunk: int) -> int:
    n = 0
    with agent.session(120):
        handle = agent.call("guest-file-open", timeout=60, path=path, mode="r")
        while True:
            r = agent.call("guest-file-read", timeout=60, handle=handle, count=chunk)
            n += len(base64.b64decode(r["buf-b64"]))
            if r.get("eof") or not r["count"]:
                break
        agent.call("guest-file-close", handle=handle)
    return n


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=32, help="size of the test file (default 32 MiB)")
    ap.add_argument("--backend", default="qemu", choices=["qemu", "libvirt"])
    args = ap.parse_args()
    size = args.mib * 1024**2
    with tempfile.TemporaryDirectory(prefix="vmfx-bench-") as tmp:
        tmp = Path(tmp)
        src, small = tmp / "src.bin", tmp / "small.bin"
        src.write_bytes(os.urandom(size))
        small.write_bytes(os.urandom(1024))
        storage = tmp / "vms"
        driver = open_backend(args.backend, storage, quiet=True)
        try:
            driver.create(VMSpec(name="bench"))
            m = driver.machine("bench")
            print(f"{args.backend}, {args.mib} MiB of random data, MB/s (higher is better):")
            for chunk in (48 * 1024, 1024**2):
                w = timed(lambda c=chunk: agent_write(m.agent, src, "/root/a.bin", c))
                r = timed(lambda c=chunk: agent_read(m.agent, "/root/a.bin", c))
                print(f"  guest agent, {chunk // 1024:>5} KiB chunks   write {size / w / 1e6:6.1f}   read {size / r / 1e6:6.1f}")
            m.ssh.connect(60)
            w = timed(lambda: upload(m, src, "/root/b.bin"))
            r = timed(lambda: download(m, "/root/b.bin", str(tmp / "back.bin")))
            print(f"  SFTP (vmfixtures cp's code)   write {size / w / 1e6:6.1f}   read {size / r / 1e6:6.1f}")
            assert Host.sha256(tmp / "back.bin") == Host.sha256(src), "the round trip changed the file"
            env = {**os.environ, "VMFIXTURES_DAEMON": "off"}
            print("peak memory of `vmfixtures cp` (VmHWM):")
            for f in (small, src):
                proc = subprocess.Popen([sys.executable, "-m", "vmfixtures", "-q", "--storage", str(storage), "cp",
                                         str(f), "bench:/root/"], env=env, stdout=subprocess.DEVNULL)
                peak = Host.peak_memory(proc)
                proc.wait()
                print(f"  {f.stat().st_size / 1024**2:8.3f} MiB file: {peak / 1024**2:.1f} MiB (exit {proc.returncode})")
            m.close()
        finally:
            for name in driver.names():
                driver.destroy(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

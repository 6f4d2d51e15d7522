"""A VM's network: what the guest can reach, as one of three profiles.

The guest always sees the same link: address 10.0.2.15/24, gateway 10.0.2.2, its sshd forwarded from a
free port on the host's 127.0.0.1. What differs is what lies behind the gateway:

``nat`` (default)
    Outbound connections to anywhere, through passt with ``--no-map-gw``. QEMU's own user networking
    (slirp) maps the gateway to the host's loopback, so every service bound to the host's 127.0.0.1
    would be open to the guest; passt without that mapping treats the gateway as just another address.
``filtered``
    passt running with a group of its own, and an nftables table for that group: new outbound connections
    only to the allow-listed TCP ports (and UDP 53 for DNS); replies and the forwarded SSH connection
    pass. The rules match the sockets passt opens on the guest's behalf, so nothing the guest does
    (it is root in there) can change them. Needs root on the host, for nftables and the group switch.
    (A group, not a user: passt binds its socket after dropping privileges, so it keeps our uid to
    create it in our private socket folder.)
``isolated``
    QEMU's user networking with ``restrict=on``: no packet of the guest leaves the VM; only the SSH
    forward reaches it. No host helper, no root needed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from .errors import ConfigError, MissingDependency, PermissionDenied, VmfError
from .files import read_json, write_atomically
from .procs import CHILDREN, ProcessId, kill

PROFILES = ("nat", "filtered", "isolated")
# seed 002's agent network: SSH, DNS, HTTP, HTTPS, git.
DEFAULT_ALLOW = (22, 53, 80, 443, 9418)
GUEST_ADDRESS = "10.0.2.15"
GATEWAY = "10.0.2.2"
PREFIX_LENGTH = 24
SOCKET = "net.sock"
RECORD = "net.json"
TABLE_PREFIX = "vmfx_"
# Gids passt runs with for filtered VMs: far above any real group, one per VM.
GID_BASE, GID_SPAN = 2_000_000_000, 100_000_000


@dataclass(frozen=True)
class NetworkSpec:
    """The profile and, for ``filtered``, the outbound TCP ports allowed."""

    profile: str = "nat"
    allow: tuple[int, ...] = ()

    def to_config(self) -> object:
        if self.profile == "filtered" and self.allow != DEFAULT_ALLOW:
            return {"profile": self.profile, "allow": list(self.allow)}
        return self.profile


def parse_network(raw: object, where: str) -> NetworkSpec:
    """``network: nat|filtered|isolated`` or ``network: {profile: filtered, allow: [443, ...]}``."""
    if raw is None:
        return NetworkSpec()
    if isinstance(raw, str):
        raw = {"profile": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a profile name ({', '.join(PROFILES)}) or a mapping "
                          f"with 'profile' and 'allow', got {type(raw).__name__}")
    unknown = set(raw) - {"profile", "allow"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown field (allowed: allow, profile)")
    profile = raw.get("profile", "nat")
    if profile not in PROFILES:
        raise ConfigError(f"{where}.profile: unknown network profile {profile!r} (known: {', '.join(PROFILES)})")
    if "allow" not in raw:
        return NetworkSpec(profile, DEFAULT_ALLOW if profile == "filtered" else ())
    if profile != "filtered":
        raise ConfigError(f"{where}.allow: an allow-list applies to the 'filtered' profile only, not {profile!r}")
    allow = raw["allow"]
    if not isinstance(allow, list) or not allow:
        raise ConfigError(f"{where}.allow: expected a non-empty list of TCP port numbers, got {allow!r}")
    for i, port in enumerate(allow):
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"{where}.allow[{i}]: {port!r} is not a port number (1-65535)")
    return NetworkSpec(profile, tuple(sorted(set(allow))))


class Network:
    """The host side of one VM's network: started before QEMU, torn down with its socket folder."""

    def __init__(self, spec: NetworkSpec, run: Path, vm: str):
        self.spec, self.run, self.vm = spec, Path(run), vm
        self.qemu_end: socket.socket | None = None  # start(handoff=True): QEMU's end of passt's socket pair
        self._passt: subprocess.Popen | None = None  # and its port, after start(handoff=True)
        self.ssh_port = 0

    def start(self, meanwhile=None, handoff: bool = False) -> dict:
        """Start passt (and the firewall of a filtered VM); return the record kept in ``run/net.json``.
        ``meanwhile`` runs once, while passt starts up, or at once without passt (a launcher starts its
        other helpers then).

        ``handoff``: passt gets one end of a socket pair (``--fd``) instead of making a socket for QEMU
        to connect to, and ``qemu_end`` keeps the other end for QEMU's command line. Nothing waits for
        passt then: its start-up (10-15 ms idle, 25-100 ms on a busy host) overlaps QEMU's, and the
        launcher calls ``wait_listening`` once QEMU runs."""
        record: dict = {"profile": self.spec.profile, "allow": list(self.spec.allow)}
        if self.spec.profile == "isolated":
            _write(self.run / RECORD, record)
            if meanwhile:
                meanwhile()
            return record
        passt = shutil.which("passt")
        if not passt:
            raise MissingDependency("passt is not installed (Debian package passt): VM networks use it so the "
                              "guest cannot reach services on the host's loopback")
        gid = None
        if self.spec.profile == "filtered":
            if os.geteuid() != 0:
                raise PermissionDenied(f"VM '{self.vm}': the filtered network needs root (nftables rules for "
                                       "its own group); run as root or use the nat or isolated profile")
            if not shutil.which("nft"):
                raise MissingDependency("nft is not installed (Debian package nftables): the filtered network needs it")
            gid = GID_BASE + secrets.randbelow(GID_SPAN)
            record["table"] = f"{TABLE_PREFIX}{gid}"
            _write(self.run / RECORD, record)  # before the rules exist: teardown finds them even if we die
            _nft(_ruleset(record["table"], gid, self.spec.allow))
        for _ in range(1 if handoff else 3):
            port = _free_port()
            if handoff:
                self.qemu_end, passt_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                with passt_end:
                    proc = _spawn_passt(passt, self.run / SOCKET, port, gid, passt_end)
            else:
                proc = _spawn_passt(passt, self.run / SOCKET, port, gid)
            record["passt"] = ProcessId.of(proc.pid).record()
            record["ssh_port"] = port
            _write(self.run / RECORD, record)
            if meanwhile:
                meanwhile()
                meanwhile = None  # once, not again for a retry
            if handoff:
                self._passt, self.ssh_port = proc, port
                return record
            if _listening(proc, port, self.run / SOCKET):
                return record
            kill(psutil.Process(proc.pid) if proc.poll() is None else None)
        raise VmfError(f"VM '{self.vm}': passt did not come up listening on a free port (see {self.run})")

    def wait_listening(self) -> bool:
        """After ``start(handoff=True)``: passt listens on the forwarded port (False: it exited, the port
        was taken between our choice and its bind; the launcher starts again with another)."""
        return self._passt is None or _listening(self._passt, self.ssh_port)

    def qemu_fds(self) -> list[int]:
        """File descriptors QEMU must inherit for ``qemu_args`` (the handed-off socket's end)."""
        return [self.qemu_end.fileno()] if self.qemu_end else []

    def close_qemu_end(self) -> None:
        """Once QEMU is spawned (it holds its own copy) or could not be."""
        if self.qemu_end:
            self.qemu_end.close()

    def qemu_args(self, record: dict, device_options: str = "") -> list[str]:
        """The -netdev/-device pair for QEMU's command line (also passed through libvirt, which
        needs a PCI slot named in ``device_options``: it does not know this device is there)."""
        if self.spec.profile == "isolated":
            netdev = "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:0-:22"
        else:
            where = (f"addr.type=fd,addr.str={self.qemu_end.fileno()}" if self.qemu_end
                     else f"addr.type=unix,addr.path={self.run / SOCKET}")
            netdev = f"stream,id=net0,server=off,{where}"
        return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,id=nic0{device_options}"]


def read_record(run: Path) -> dict | None:
    return read_json(Path(run) / RECORD)


def teardown(run: Path) -> None:
    """Stop the VM's passt and drop its firewall table; fine when there is neither."""
    record = read_record(run)
    if not record:
        return
    pid = ProcessId.from_record(record.get("passt"))
    if pid:
        kill(pid.process())
    if record.get("table"):
        drop_table(record["table"])


def drop_table(table: str) -> None:
    if table.startswith(TABLE_PREFIX) and shutil.which("nft"):
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)


def our_tables() -> list[str]:
    """nftables tables of filtered VMs (for leak checks)."""
    if not shutil.which("nft") or os.geteuid() != 0:
        return []
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.split()[-1:] and
            line.split()[-1].startswith(TABLE_PREFIX)]


def our_passts(runtime_root: Path) -> list[tuple[psutil.Process, Path]]:
    """(process, socket folder) of passt processes serving VMs of ours (socket under ``runtime_root``)."""
    found = []
    prefix = str(runtime_root) + "/"
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if not cmd or not Path(cmd[0]).name.startswith("passt"):
            continue
        for flag, value in zip(cmd, cmd[1:]):
            if flag in ("-s", "-P") and value.startswith(prefix):
                found.append((proc, Path(value).parent))
    return found


def _ruleset(table: str, gid: int, allow: tuple[int, ...]) -> str:
    ports = ", ".join(str(p) for p in allow)
    who = f"meta skgid {gid}"
    return f"""table inet {table} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    {who} ct state established,related accept
    {who} tcp dport {{ {ports} }} accept
    {who} udp dport 53 accept
    {who} meta l4proto tcp counter reject with tcp reset
    {who} counter reject
  }}
}}
"""


def _nft(ruleset: str) -> None:
    r = subprocess.run(["nft", "-f", "-"], input=ruleset, capture_output=True, text=True)
    if r.returncode != 0:
        raise VmfError(f"nft refused the filtered network's rules: {r.stderr.strip().splitlines()[-1:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_passt(passt: str, sock: Path, port: int, gid: int | None, qemu_peer: socket.socket | None = None
                 ) -> subprocess.Popen:
    """passt on ``sock`` for QEMU to connect to, or on ``qemu_peer``, a connected socket (its path then
    only names the VM's socket folder, for ``our_passts``)."""
    tap = ["--fd", str(qemu_peer.fileno()), "-P", f"{sock}.pid"] if qemu_peer else ["-s", str(sock)]
    argv = [passt, "--foreground", "--quiet", "--no-map-gw", "--ipv4-only",
            "--address", GUEST_ADDRESS, "--netmask", str(PREFIX_LENGTH), "--gateway", GATEWAY,
            "--tcp-ports", f"127.0.0.1/{port}:22", "--udp-ports", "none", *tap,
            "--runas", f"{os.getuid()}:{gid if gid is not None else os.getgid()}"]
    log = open(sock.parent / "passt.log", "ab")
    with log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                pass_fds=[qemu_peer.fileno()] if qemu_peer else ())
    CHILDREN[proc.pid] = proc  # reaped by kill(): a daemon must not collect zombies
    return proc


def _listening(proc: subprocess.Popen, port: int, sock: Path | None = None, timeout: float = 5.0) -> bool:
    """passt binds its forwarded port and its socket (``sock``, when it makes one) at start; wait for
    both (or its exit). Polled every millisecond from /proc: it takes a few, and each restore waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (sock is None or sock.exists()) and listens(proc.pid, port):
            return True
        time.sleep(0.001)
    return False


def listens(pid: int, port: int, ipv6: bool = False) -> bool:
    """Process ``pid`` itself has a TCP socket listening on ``port``: IPv4, and IPv6 too when ``ipv6``
    (read from /proc, not psutil: its view of every connection takes ~4 ms)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6") if ipv6 else ("/proc/net/tcp",):
        try:
            with open(table) as f:
                next(f)
                inodes |= {fields[9] for fields in map(str.split, f)
                           if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port}
        except (OSError, StopIteration, ValueError, IndexError):
            continue  # no such table (IPv6 off): nothing listens there
    if not inodes:
        return False
    try:
        folder = f"/proc/{pid}/fd"
        for fd in os.listdir(folder):
            try:
                target = os.readlink(f"{folder}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    except OSError:
        pass  # the process is gone
    return False


def _write(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data))


def describe(driver, name: str) -> dict:
    """A VM's network as `vmfixtures vm info` reports it: profile, allow-list, forwards, and (while
    it runs) the addresses the guest agent reports for the guest's interfaces."""
    spec = driver.spec(name).network
    state = driver.state(name).value
    info = {"name": name, "state": state, "profile": spec.profile, "allow": list(spec.allow),
            "gateway": GATEWAY, "addresses": [], "forwards": []}
    run = driver.run_info(name) if state == "running" else None
    if not run:
        return info
    if run.get("ssh_port"):
        info["forwards"].append({"host": f"127.0.0.1:{run['ssh_port']}", "guest": 22, "what": "ssh"})
    for iface in driver.machine(name).agent.call("guest-network-get-interfaces") or []:
        if iface.get("name") == "lo":
            continue
        for addr in iface.get("ip-addresses") or []:
            if addr.get("ip-address-type") == "ipv4":
                info["addresses"].append({"interface": iface["name"],
                                          "address": f"{addr['ip-address']}/{addr.get('prefix')}"})
    return info


def describe_text(info: dict) -> str:
    """Human lines for `vmfixtures vm info`."""
    allow = f" (outbound TCP ports {', '.join(map(str, info['allow']))}; DNS)" if info["profile"] == "filtered" else ""
    lines = [f"{info['name']}: {info['state']}, network {info['profile']}{allow}"]
    for a in info["addresses"]:
        lines.append(f"  address  {a['address']} on {a['interface']}, gateway {info['gateway']}")
    for f in info["forwards"]:
        lines.append(f"  forward  {f['host']} -> guest port {f['guest']} ({f['what']})")
    if info["state"] != "running":
        lines.append("  (addresses and forwards are shown while the VM runs)")
    return "\n".join(lines)

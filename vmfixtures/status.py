"""`vmfixtures status`: each VM of a config with its state and resources, its mounts
(mounted in the guest right now? when was the last backup?) and the agents running in it."""

from __future__ import annotations

from .agents import backup_dest, command_name
from .backups.folders import snapshots
from .mounts import SSHFS, Mounts
from .sizes import format_size
from .spec import Config
from .vmlist import describe_vms


def project_status(driver, config: Config) -> list[dict]:
    """One row per VM of ``config``; guest facts (mounts, agent processes) only for running VMs."""
    existing = {r["name"]: r for r in describe_vms(driver)}
    rows = []
    for name, spec in config.vms.items():
        row = existing.get(name) or {"name": name, "state": "missing", "cpus": spec.cpus,
                                     "memory": format_size(spec.memory), "disk": format_size(spec.disk),
                                     "network": spec.network.profile}
        running = row["state"] == "running"
        in_guest = Mounts(driver, name).guest_mounts() if running else {}
        row["mounts"] = []
        for m in (m for m in config.mounts if m.vm == name):
            taken = snapshots(backup_dest(config, m))
            row["mounts"].append({"source": m.given, "target": m.target,
                                  "mounted": in_guest.get(m.target) == SSHFS,
                                  "last_backup": taken[-1].name if taken else None})
        row["agents"] = []
        for agent in config.agents.values():
            pids = []
            if running:
                found = driver.machine(name).execute(["pgrep", "-f", command_name(agent)])
                pids = [int(p) for p in found.stdout.split()]
            row["agents"].append({"name": agent.name, "pids": pids})
        rows.append(row)
    return rows


def describe(rows: list[dict]) -> str:
    """Human lines for `vmfixtures status`."""
    lines = []
    for r in rows:
        where = f"  {r.get('accel', '')}  ssh 127.0.0.1:{r['ssh_port']}" if r.get("ssh_port") else ""
        lines.append(f"{r['name']:<12} {r['state']:<8} {r['cpus']} cpu  {r['memory']}  {r['disk']}  "
                     f"network {r.get('network', 'nat')}{where}")
        for m in r["mounts"]:
            lines.append(f"  mount  {m['source']} -> {m['target']}  {'mounted' if m['mounted'] else 'not mounted'}"
                         f"  last backup {m['last_backup'] or 'none'}")
        for a in r["agents"]:
            state = f"running (pid {', '.join(map(str, a['pids']))})" if a["pids"] else "not running"
            lines.append(f"  agent  {a['name']}  {state}")
    return "\n".join(lines) or "the config declares no VMs"

"""A table of VMs and their state, shared by `vmfixtures vm list` and the spec."""

from __future__ import annotations

from .sizes import format_size


def describe_vms(driver) -> list[dict]:
    """One row per VM: name, state, resources, and (when running) pid, accel, ssh port."""
    rows = []
    for name in driver.names():
        spec = driver.spec(name)
        row = {"name": name, "state": driver.state(name).value, "cpus": spec.cpus,
               "memory": format_size(spec.memory), "disk": format_size(spec.disk), "image": spec.image,
               "network": spec.network.profile}
        info = driver.run_info(name) if row["state"] == "running" else None
        if info:
            row.update(pid=info["pid"], accel=info["accel"], ssh_port=info.get("ssh_port"))
        rows.append(row)
    return rows

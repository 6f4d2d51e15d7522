"""The guest is untrusted: attacks run as root inside the guest (through its agent, as the harness
reaches it); whether they got anywhere is judged on the host, by the host witness."""

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from behave import given, then, when

from vmfixtures.testkit import serve_in_guest

MiB = 1024**2
RIGGED = "/usr/local/bin/sshfs"  # ahead of /usr/bin in the PATH of an SSH session: the host's mount runs it


def _guest(context, vm):
    return context.driver.machine(vm)


def _source(context, folder="app"):
    return (context.project.folder / folder).resolve()


def _outside_tree(context):
    """What the host holds outside the mounted folder: the rest of the project and the elsewhere folder."""
    facts = {f"project/{k}": v for k, v in context.host.tree(context.project.folder).items()
             if k != "app" and not k.startswith("app/")}
    facts.update({f"elsewhere/{k}": v for k, v in context.host.tree(context.elsewhere).items()})
    return facts


# -- mounted folders ---------------------------------------------------------------------------------
@given('secrets lie on the host beside "{folder}" and elsewhere, and "{linked}" holds links to them')
def step_secrets(context, folder, linked):
    context.secret = f"secret-{secrets.token_hex(8)}"  # only the host knows it: the guest can only have read it
    context.elsewhere = Path(tempfile.mkdtemp(prefix="vmfx-elsewhere-"))
    context.add_cleanup(shutil.rmtree, context.elsewhere, True)
    beside = context.project.write_file("secret.txt", context.secret)
    far = context.elsewhere / "secret.txt"
    far.write_text(context.secret + "\n")
    context.secret_paths = [beside.resolve(), far.resolve()]
    app = _source(context, linked)
    (app / "up").symlink_to("../secret.txt")  # links planted on the host before the guest ever looks
    (app / "abs").symlink_to(far)


@given('the guest of "{vm}" has rigged its file-system client to ask the host for {what}')
def step_rig(context, vm, what):
    """Root in the guest replaces sshfs, which the host runs in the guest to mount a folder, with a
    script that asks the host's file server for another folder and resolves links on the host's side."""
    source = _source(context)
    bases = {"the mounted folder": None, "its parent folder": ":$src/..", "the host's root": ":/"}
    assert what in bases, f"unknown request {what!r} (known: {', '.join(bases)})"
    context.mount_shows = {None: source, ":$src/..": source.parent, ":/": Path("/")}[bases[what]]
    if bases[what] is None:
        return  # the guest's sshfs is left alone: the attack uses the mount as mounted
    script = ("#!/bin/sh\n# the host runs: sshfs -f -o slave :SOURCE TARGET\n"
              'for a; do case "$a" in :*) src=${a#:} ;; esac; t=$a; done\n'
              f'exec /usr/bin/sshfs -f -o slave -o follow_symlinks "{bases[what]}" "$t"\n')
    m = _guest(context, vm)
    m.write_file(RIGGED, script)
    m.succeed(["chmod", "755", RIGGED])


# Reads first (so the project's README is still there to read), then writes; every error is ignored:
# the attacker tries everything and reports what it got.
ATTACK = r'''
import json, os, sys
p = json.load(sys.stdin)
M, SRC, SHOWS = p["mount"], p["source"], p["shows"]
def at(host_path):
    return os.path.normpath(os.path.join(M, os.path.relpath(host_path, SHOWS)))
def attempt(what, fn):
    try:
        out = fn()
        print(f"{what}: ok {out if out is not None else ''}")
    except OSError as e:
        print(f"{what}: {e.strerror}")
def read(path):
    with open(path, "rb") as f:
        return f.read(4096).decode(errors="replace").strip()
def write(path, text="written by the guest"):
    with open(path, "w") as f:
        f.write(text)
src = at(SRC)
attempt("control", lambda: read(os.path.join(src, "README.md")))
for i, s in enumerate(p["secrets"]):
    attempt(f"direct {i}", lambda: read(at(s)))
    attempt(f"raw dots {i}", lambda: read(src + "/" + os.path.relpath(s, SRC)))
    attempt(f"list {i}", lambda: os.listdir(os.path.dirname(at(s))))
    attempt(f"guest abs symlink {i}", lambda: os.symlink(s, f"{src}/g-abs-{i}"))
    attempt(f"guest rel symlink {i}", lambda: os.symlink(os.path.relpath(s, SRC), f"{src}/g-rel-{i}"))
    attempt(f"guest hard link {i}", lambda: os.link(at(s), f"{src}/g-hard-{i}"))
    for name in (f"g-abs-{i}", f"g-rel-{i}", f"g-hard-{i}"):
        attempt(f"read {name}", lambda: read(f"{src}/{name}"))
for name in ("up", "abs"):
    attempt(f"read host link {name}", lambda: read(f"{src}/{name}"))
for i, s in enumerate(p["secrets"]):
    attempt(f"overwrite {i}", lambda: write(at(s)))
    attempt(f"new file beside {i}", lambda: write(os.path.join(os.path.dirname(at(s)), "planted.txt")))
    attempt(f"new folder beside {i}", lambda: os.mkdir(os.path.join(os.path.dirname(at(s)), "planted")))
    attempt(f"chmod {i}", lambda: os.chmod(at(s), 0o777))
    attempt(f"truncate {i}", lambda: os.truncate(at(s), 0))
    attempt(f"link out {i}", lambda: os.link(os.path.join(src, "README.md"), os.path.join(os.path.dirname(at(s)), "linked.txt")))
    for name in (f"g-abs-{i}", f"g-rel-{i}"):
        attempt(f"write through {name}", lambda: write(f"{src}/{name}"))
    attempt(f"remove {i}", lambda: os.unlink(at(s)))
for name in ("up", "abs"):
    attempt(f"write through host link {name}", lambda: write(f"{src}/{name}"))
attempt("move out", lambda: os.rename(os.path.join(src, "README.md"), os.path.join(os.path.dirname(src), "moved.txt")))
attempt("store in the server's root", lambda: write(os.path.join(M, "planted-in-root")))
'''


@when('from inside "{vm}" an attacker reads and writes outside "{target}" by "..", absolute paths, symlinks and hard links')
def step_attack_mount(context, vm, target):
    mounts = context.host.guest_mounts(_guest(context, vm))
    assert mounts.get(target, "").startswith("fuse"), \
        f"expected {target} mounted in '{vm}' for the attack, the guest has {mounts}; {context.outcome.describe()}"
    params = {"mount": target, "source": str(_source(context)), "shows": str(context.mount_shows),
              "secrets": [str(p) for p in context.secret_paths]}
    context.outside_before = _outside_tree(context)
    r = _guest(context, vm).execute(["python3", "-c", ATTACK], input=json.dumps(params).encode(), timeout=120)
    assert r.ok, f"the attack script itself failed in '{vm}': {r.describe()}"
    context.attack_report = r.stdout


@then("the attacker read the project but no secret")
def step_read_nothing(context):
    report = context.attack_report
    assert "control: ok the project" in report, \
        f"expected the attacker to read the project's README through the mount (so the attack ran), got:\n{report}"
    assert context.secret not in report, f"the guest read a secret from outside the mounted folder:\n{report}"


@then('nothing outside "{folder}" on the host was changed or added')
def step_outside_untouched(context, folder):
    after = _outside_tree(context)
    before = context.outside_before
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    assert not (changed or added or removed), (f"the guest reached outside '{folder}': changed {changed}, "
                                               f"added {added}, removed {removed}\nattack report:\n"
                                               f"{context.attack_report}")


# -- forwarded ports ---------------------------------------------------------------------------------
@given('the guest of "{vm}" lets its SSH server open forwarded ports to anyone and listens on every address')
def step_guest_opens_up(context, vm):
    m = _guest(context, vm)
    m.succeed("sed -i '/GatewayPorts/d' /etc/ssh/sshd_config && echo 'GatewayPorts yes' >> /etc/ssh/sshd_config "
              "&& { pkill -HUP -x sshd; true; }")  # a listening sshd re-reads it; one per connection reads it anyway
    serve_in_guest(m, 8000, "served on every address")
    m.succeed("setsid python3 -m http.server 8001 --bind :: </dev/null >/dev/null 2>&1 &")


@given('the config forwards host address {addr} port {host:d} to port {guest:d} of "{name}"')
def step_forward_named_address(context, addr, host, guest, name):
    context.project.declare_forward(name, "local", f"{addr}:{host}", guest)


@then('everything the host listens on for "{vm}" is on 127.0.0.1, but port {port:d} on {addr} as the config names it')
def step_loopback_only(context, vm, port, addr):
    o = context.outcome
    assert o.done, f"expected port forwarding up; {o.describe()}"
    vm_dir = context.driver.vm_dir(vm)
    pids = {p.pid for p in context.host.vm_processes(vm_dir)}
    pids |= {p.pid for p in context.host.processes_mentioning((vm_dir / "run").resolve())}  # its network helper
    vm_pids = set(pids)
    pids |= set(context.host.process_tree(o.process.proc.pid))  # the forwarder and its tunnels
    sockets = context.host.tcp_listeners(pids)
    wrong = [s for s in sockets if s[0] != (addr if s[1] == port else "127.0.0.1")]
    assert not wrong, f"expected every listener for '{vm}' on 127.0.0.1 ({addr} for port {port}), found " \
                      f"(address, port, pid) {wrong} among {sockets}"
    ports = {s[1] for s in sockets}
    forwarded = {f["host"] if isinstance(f["host"], int) else int(str(f["host"]).rsplit(":", 1)[1])
                 for f in context.project.forwards if f["kind"] != "remote"}
    assert forwarded <= ports, f"expected the forwards' ports among the listeners, found {sockets}"
    assert any(s[2] in vm_pids for s in sockets), f"expected the VM's own SSH port among the listeners, found {sockets}"


# -- the warm pool -------------------------------------------------------------------------------------
LEFTOVERS = ("/root/loot.txt", "/tmp/loot.txt", "/var/tmp/loot.txt", "/dev/shm/loot.txt", "/root/.bash_history",
             "/etc/profile.d/loot.sh")


@given('the tenant of "{vm}" left files, a running process and a shell history behind')
def step_tenant_leaves(context, vm):
    context.loot = f"loot-{secrets.token_hex(6)}"
    m = _guest(context, vm)
    for path in LEFTOVERS:
        m.write_file(path, f"echo {context.loot}\n")
    m.succeed(f"cp /bin/sleep /run/{context.loot} && setsid /run/{context.loot} 3600 </dev/null >/dev/null 2>&1 & sync")
    assert context.loot in m.succeed(["pgrep", "-af", context.loot]), "the tenant's process did not start"


@then('the guest of "{vm}" holds nothing the previous tenant left')
def step_nothing_left(context, vm):
    m = _guest(context, vm)
    places = ["/root", "/tmp", "/var/tmp", "/dev/shm", "/etc", "/run"]
    found = m.execute(["grep", "-rls", context.loot, *places]).stdout.split()
    found += m.execute(["find", *places, "-name", f"*{context.loot}*"]).stdout.split()
    procs = m.execute(["pgrep", "-af", context.loot]).stdout.strip()
    assert not found and not procs, f"the new tenant of '{vm}' found the last one's files {found} and processes {procs!r}"


@then('the guests of "{a}" and "{b}" draw different random numbers')
def step_different_random(context, a, b):
    draw = ("cat /proc/sys/kernel/random/uuid; python3 -c 'import os; print(os.urandom(16).hex())'; "
            "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
    draws = {vm: _guest(context, vm).succeed(draw).split() for vm in (a, b)}
    same = [x for x, y in zip(draws[a], draws[b]) if x == y]
    assert not same, f"'{a}' and '{b}' drew the same random values {same}: their generators share a state " \
                     f"({draws})"


# -- the host's control sockets ------------------------------------------------------------------------
HUNT = r'''
import json, os, socket, stat, sys
p = json.load(sys.stdin)
M, SHOWS = p["mount"], p["shows"]
found = []
seen = 0
for root, dirs, files in os.walk(M):  # what the mount shows, but not the host's system software
    dirs[:] = [d for d in dirs if root != M or d not in ("usr", "lib", "lib64", "bin", "sbin", "proc", "sys", "dev")]
    seen += len(files) + len(dirs)
    if seen > 2000:
        break
    for name in files:
            path = os.path.join(root, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    found.append(path)
            except OSError:
                pass
for host_path in p["sockets"]:
    guest_path = os.path.normpath(os.path.join(M, os.path.relpath(host_path, SHOWS)))
    for what, fn in (("stat", os.lstat), ("remove", os.unlink), ("rename", lambda q: os.rename(q, q + ".gone"))):
        try:
            fn(guest_path)
            found.append(f"{what} {host_path} as {guest_path}: ok")
        except OSError:
            pass
print(json.dumps(found))
'''


def _control_sockets(context, vm):
    """The daemon's socket (when a daemon serves this run) and every socket in the VM's socket folder."""
    found = sorted((context.driver.vm_dir(vm) / "run").resolve().glob("*.sock"))
    if context.client is not None:
        found.append(Path(context.client.socket_path))
    return found


@when('from inside "{vm}" an attacker hunts for the host\'s control sockets and tries to remove them')
def step_hunt(context, vm):
    mounts = context.host.guest_mounts(_guest(context, vm))
    assert mounts.get("/work/app", "").startswith("fuse"), f"expected /work/app mounted in '{vm}', found {mounts}"
    context.sockets = {}
    for name in context.project.vms:
        if name != vm:
            context.sockets.update({p: os.lstat(p).st_ino for p in _control_sockets(context, name)})
    assert context.sockets, "expected control sockets on the host to hunt for"
    params = {"mount": "/work/app", "shows": str(context.mount_shows), "sockets": [str(p) for p in context.sockets]}
    r = _guest(context, vm).execute(["python3", "-c", HUNT], input=json.dumps(params).encode(), timeout=120)
    assert r.ok, f"the hunt itself failed in '{vm}': {r.describe()}"
    context.hunt = json.loads(r.stdout)


@then('the attacker found none of the daemon\'s sockets nor those of "{other}"')
def step_found_none(context, other):
    hits = [h for h in context.hunt if " ok" in h or any(Path(h).name == p.name for p in context.sockets)]
    assert not hits, f"from inside the guest, the host's control sockets were within reach: {hits}"


@then("those sockets are still in place on the host, in folders only the host user can enter")
def step_sockets_intact(context):
    for path, inode in context.sockets.items():
        assert path.exists() and os.lstat(path).st_ino == inode, f"{path} was removed or replaced"
        assert context.host.private_folder(path.parent), f"{path.parent} is open to other users or not ours"

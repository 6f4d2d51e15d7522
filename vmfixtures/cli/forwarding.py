"""`vmfixtures portforward`: the config's SSH tunnels, kept up until Ctrl-C."""

from __future__ import annotations

from .. import errors
from ..spec import load_config
from .common import add_config, daemon_client, vm_backend


def cmd_portforward(args) -> int:
    """Keep the config's forwards up until Ctrl-C/SIGTERM, restoring any tunnel whose ssh dies."""
    import signal

    import psutil

    from ..forwarding import Forwarder

    config = load_config(args.config)
    specs = [f for f in config.forwards if args.vm in (None, f.vm)]
    if not specs:
        raise errors.ConfigError(f"{config.path}: no forwards{f' for VM {args.vm!r}' if args.vm else ''} "
                                 "under 'forwards'")
    driver, client = vm_backend(args), daemon_client()

    def record_up(t):
        if client:
            t.ledger_id = client.tunnel_up(driver.storage, t.spec.vm, t.spec.kind, str(t.spec.host),
                                           str(t.spec.guest or "socks5"), t.pid,
                                           psutil.Process(t.pid).create_time(), t.ledger_id)

    def record_down(t):
        if client and t.ledger_id is not None:
            client.tunnel_down(t.ledger_id)

    fwd = Forwarder(driver, specs, say=lambda line: print(line, flush=True), on_up=record_up, on_down=record_down)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: fwd.request_stop())
    fwd.start()
    print(f"forwarding {len(specs)} tunnel(s); Ctrl-C stops them", flush=True)
    given_up = fwd.run()
    pids = fwd.stop()
    print(f"stopped: {len(pids)} ssh process(es) ended, every one gone", flush=True)
    if given_up:
        raise errors.VmfError(f"{given_up} tunnel(s) could not be restored (see the lines above)")
    return 0


def register(sub) -> None:
    pf = sub.add_parser("portforward", help="keep the config's SSH tunnels (local, remote, socks5) up until Ctrl-C",
                        description="Start one ssh per forward in the config's 'forwards' list, wait until each "
                                    "really listens, restore any that dies, and stop them all on Ctrl-C/SIGTERM. "
                                    "Host ends bind to 127.0.0.1 unless the config names another address.")
    pf.add_argument("--vm", help="only the forwards of this VM")
    add_config(pf)
    pf.set_defaults(func=cmd_portforward)

"""Two reapers destroying the same VMs at once (the daemon reaping a dead lease while the
next run reaps the dead run) must both finish cleanly: the second one finds less to do."""

import json
import threading

from vmfixtures.backends.qemu import QemuBackend, make_run_dir, run_dirs_of
from vmfixtures.errors import NotFound
from vmfixtures.scope import RunScope


def _stopped_vms(storage, n):
    for i in range(n):
        vm_dir = storage / f"vm{i}"
        vm_dir.mkdir(parents=True)
        (vm_dir / "vm.json").write_text(json.dumps({"spec": {"name": f"vm{i}"}}))
        (vm_dir / "disk.qcow2").write_bytes(b"\0" * 4096)
        run = make_run_dir(vm_dir)
        (run / "qmp.sock").write_bytes(b"")


def test_racing_destroyers_both_succeed_and_leave_nothing(tmp_path):
    storage = tmp_path / "vms"
    for trial in range(5):
        _stopped_vms(storage, 30)
        errors = []

        def reap(kind):
            try:
                if kind == "scope":
                    RunScope._destroy_all(storage)
                else:
                    driver = QemuBackend(storage=storage, quiet=True)
                    for name in driver.names():
                        try:
                            driver.destroy(name)
                        except NotFound:
                            pass
            except Exception as e:  # noqa: BLE001 - any error is the failure under test
                errors.append(f"{kind}: {e!r}")

        threads = [threading.Thread(target=reap, args=(k,)) for k in ("scope", "driver", "scope", "driver")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"trial {trial}: a racing destroyer failed: {errors}"
        assert list(storage.iterdir()) == [], f"trial {trial}: files left: {list(storage.iterdir())}"
        assert run_dirs_of(storage) == [], f"trial {trial}: socket folders left"

"""The daemon's ledger: SQLite in WAL mode, the record of everything it owns.

Every change is written *before* it is acted on (a VM row is ``creating``
before QEMU starts, ``destroying`` before it is killed), so a crash at any
point leaves a row that says what may exist, and start-up reconciliation can
finish or undo it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import Mismatch

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases(
  id TEXT PRIMARY KEY,
  owner_pid INTEGER, owner_start REAL, run_id TEXT,
  scope TEXT NOT NULL, scope_key TEXT,
  ttl REAL, expires_at REAL,
  state TEXT NOT NULL,                 -- active | ended
  created_at REAL NOT NULL, ended_at REAL, end_reason TEXT);
CREATE TABLE IF NOT EXISTS vms(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  storage TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
  pool_key TEXT, lease_id TEXT REFERENCES leases(id),
  state TEXT NOT NULL,                 -- creating | pooled | leased | stopped | destroying | destroyed
  source TEXT,                         -- pool | restore | boot
  created_at REAL NOT NULL, updated_at REAL NOT NULL,
  backend TEXT NOT NULL DEFAULT 'qemu'); -- qemu | libvirt | multipass
CREATE UNIQUE INDEX IF NOT EXISTS vms_live ON vms(storage, name) WHERE state != 'destroyed';
CREATE TABLE IF NOT EXISTS processes(
  pid INTEGER NOT NULL, create_time REAL NOT NULL, vm_id INTEGER REFERENCES vms(id),
  role TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL,
  PRIMARY KEY (pid, create_time));
CREATE TABLE IF NOT EXISTS disks(
  path TEXT PRIMARY KEY, vm_id INTEGER REFERENCES vms(id), -- data disks: the VM attached to, NULL detached
  kind TEXT NOT NULL,                  -- overlay | snapshot | restored | data
  created_at REAL NOT NULL, removed_at REAL,
  name TEXT, size INTEGER, lease_id TEXT); -- data disks: name, bytes, the lease that made it (dies with it)
CREATE TABLE IF NOT EXISTS mounts(
  id INTEGER PRIMARY KEY AUTOINCREMENT, vm_id INTEGER REFERENCES vms(id),
  host_path TEXT NOT NULL, guest_path TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tunnels(
  id INTEGER PRIMARY KEY AUTOINCREMENT, vm_id INTEGER REFERENCES vms(id),
  kind TEXT NOT NULL, bind TEXT NOT NULL, target TEXT NOT NULL, pid INTEGER,
  state TEXT NOT NULL, created_at REAL NOT NULL, create_time REAL);
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
  subject TEXT, detail TEXT);
"""

LIVE_VM_STATES = ("creating", "pooled", "leased", "stopped", "destroying")


class Ledger:
    """Thread-safe access to the ledger file (one connection, one lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self.lease_ended = threading.Condition()  # notified whenever a lease ends
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(tunnels)")}
            if "create_time" not in columns:  # a ledger from before tunnels were supervised
                self._db.execute("ALTER TABLE tunnels ADD COLUMN create_time REAL")
            if "backend" not in {r[1] for r in self._db.execute("PRAGMA table_info(vms)")}:  # before backends
                self._db.execute("ALTER TABLE vms ADD COLUMN backend TEXT NOT NULL DEFAULT 'qemu'")
            disk_columns = {r[1] for r in self._db.execute("PRAGMA table_info(disks)")}
            for column, kind in (("name", "TEXT"), ("size", "INTEGER"), ("lease_id", "TEXT")):  # before data disks
                if column not in disk_columns:
                    self._db.execute(f"ALTER TABLE disks ADD COLUMN {column} {kind}")

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def event(self, kind: str, subject: str = "", detail: Any = None) -> None:
        self._exec("INSERT INTO events(ts, kind, subject, detail) VALUES (?,?,?,?)",
                   (time.time(), kind, subject, json.dumps(detail) if detail is not None else None))

    def events(self, limit: int = 100) -> list[dict]:
        return self._rows("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))

    # -- leases ----------------------------------------------------------
    def add_lease(self, owner_pid: int | None, owner_start: float | None, run_id: str | None,
                  scope: str, scope_key: str | None, ttl: float | None) -> str:
        lease_id = uuid.uuid4().hex[:12]
        now = time.time()
        self._exec("INSERT INTO leases(id, owner_pid, owner_start, run_id, scope, scope_key, ttl, expires_at, state,"
                   " created_at) VALUES (?,?,?,?,?,?,?,?,'active',?)",
                   (lease_id, owner_pid, owner_start, run_id, scope, scope_key, ttl, now + ttl if ttl else None, now))
        return lease_id

    def lease(self, lease_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM leases WHERE id=?", (lease_id,))
        return rows[0] if rows else None

    def active_leases(self) -> list[dict]:
        return self._rows("SELECT * FROM leases WHERE state='active' ORDER BY created_at")

    def renew(self, run_id: str | None = None, owner_pid: int | None = None) -> int:
        now = time.time()
        cur = self._exec("UPDATE leases SET expires_at = ? + ttl WHERE state='active' AND ttl IS NOT NULL "
                         "AND (run_id=? OR owner_pid=?)", (now, run_id, owner_pid))
        return cur.rowcount

    def end_lease(self, lease_id: str, reason: str) -> None:
        self._exec("UPDATE leases SET state='ended', ended_at=?, end_reason=? WHERE id=? AND state='active'",
                   (time.time(), reason, lease_id))
        with self.lease_ended:
            self.lease_ended.notify_all()

    # -- VMs -------------------------------------------------------------
    def add_vm(self, storage: str, name: str, spec: dict, state: str, lease_id: str | None = None,
               pool_key: str | None = None, source: str | None = None, backend: str = "qemu") -> int:
        now = time.time()
        try:
            cur = self._exec("INSERT INTO vms(storage, name, spec, pool_key, lease_id, state, source, created_at,"
                             " updated_at, backend) VALUES (?,?,?,?,?,?,?,?,?,?)",
                             (storage, name, json.dumps(spec), pool_key, lease_id, state, source, now, now, backend))
        except sqlite3.IntegrityError:  # the unique (storage, name) index: someone else claimed it first
            raise Mismatch(f"VM '{name}' already exists or is being created in {storage}") from None
        return int(cur.lastrowid)

    def update_vm(self, vm_id: int, **fields) -> None:
        if "spec" in fields:
            fields["spec"] = json.dumps(fields["spec"])
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        self._exec(f"UPDATE vms SET {cols} WHERE id=?", (*fields.values(), vm_id))

    def vm(self, vm_id: int) -> dict | None:
        rows = self._rows("SELECT * FROM vms WHERE id=?", (vm_id,))
        return rows[0] if rows else None

    def find_vm(self, storage: str, name: str) -> dict | None:
        rows = self._rows("SELECT * FROM vms WHERE storage=? AND name=? AND state != 'destroyed'", (storage, name))
        return rows[0] if rows else None

    def live_vms(self, lease_id: str | None = None, state: str | None = None) -> list[dict]:
        sql = f"SELECT * FROM vms WHERE state IN ({','.join('?' * len(LIVE_VM_STATES))})"
        args: list = list(LIVE_VM_STATES)
        if lease_id is not None:
            sql += " AND lease_id=?"
            args.append(lease_id)
        if state is not None:
            sql += " AND state=?"
            args.append(state)
        return self._rows(sql + " ORDER BY id", tuple(args))

    # -- processes and disks ----------------------------------------------
    def add_process(self, pid: int, create_time: float, vm_id: int, role: str = "qemu") -> None:
        self._exec("INSERT OR REPLACE INTO processes(pid, create_time, vm_id, role, started_at) VALUES (?,?,?,?,?)",
                   (pid, create_time, vm_id, role, time.time()))

    def vm_destroyed(self, vm_id: int) -> None:
        """The VM is gone: so are its processes, disks and tunnels; its data disks are detached."""
        with self._lock:
            self.update_vm(vm_id, state="destroyed")
            self.end_processes(vm_id)
            self.remove_disks(vm_id)
            self.end_tunnels(vm_id)

    def end_processes(self, vm_id: int) -> None:
        self._exec("UPDATE processes SET ended_at=? WHERE vm_id=? AND ended_at IS NULL", (time.time(), vm_id))

    def live_processes(self) -> list[dict]:
        return self._rows("SELECT * FROM processes WHERE ended_at IS NULL")

    def add_disk(self, path: str, vm_id: int | None, kind: str) -> None:
        self._exec("INSERT OR REPLACE INTO disks(path, vm_id, kind, created_at) VALUES (?,?,?,?)",
                   (path, vm_id, kind, time.time()))

    def remove_disks(self, vm_id: int) -> None:
        """The VM's own disks are gone; its data disks outlive it, detached."""
        with self._lock:
            self._exec("UPDATE disks SET removed_at=? WHERE vm_id=? AND removed_at IS NULL AND kind != 'data'",
                       (time.time(), vm_id))
            self._exec("UPDATE disks SET vm_id=NULL WHERE vm_id=? AND kind='data'", (vm_id,))

    # -- data disks -----------------------------------------------------------------
    def add_data_disk(self, path: str, name: str, size: int, lease_id: str | None) -> None:
        with self._lock:
            self._exec("DELETE FROM disks WHERE path=? AND removed_at IS NOT NULL", (path,))  # a name used before
            self._exec("INSERT INTO disks(path, vm_id, kind, created_at, name, size, lease_id) "
                       "VALUES (?,NULL,'data',?,?,?,?)", (path, time.time(), name, size, lease_id))

    def data_disk(self, path: str) -> dict | None:
        rows = self._rows("SELECT * FROM disks WHERE path=? AND kind='data' AND removed_at IS NULL", (path,))
        return rows[0] if rows else None

    def data_disks(self, vm_id: int | None = None, lease_id: str | None = None) -> list[dict]:
        """Live data disk rows (of the VM ``vm_id`` attached to, or made under ``lease_id``)."""
        sql, args = "SELECT * FROM disks WHERE kind='data' AND removed_at IS NULL", []
        if vm_id is not None:
            sql, args = sql + " AND vm_id=?", [*args, vm_id]
        if lease_id is not None:
            sql, args = sql + " AND lease_id=?", [*args, lease_id]
        return self._rows(sql + " ORDER BY name", tuple(args))

    def disk_attached(self, path: str, vm_id: int | None) -> None:
        """Record data disk ``path`` attached to VM row ``vm_id`` (None: detached)."""
        self._exec("UPDATE disks SET vm_id=? WHERE path=? AND kind='data' AND removed_at IS NULL", (vm_id, path))

    def move_disk(self, old: str, new: str) -> None:
        with self._lock:
            self._exec("DELETE FROM disks WHERE path=?", (new,))  # a removed disk that once had this path
            self._exec("UPDATE disks SET path=? WHERE path=?", (new, old))

    def remove_disk_path(self, path: str) -> None:
        self._exec("UPDATE disks SET removed_at=? WHERE path=? AND removed_at IS NULL", (time.time(), path))

    # -- tunnels ----------------------------------------------------------------
    def add_tunnel(self, vm_id: int | None, kind: str, bind: str, target: str, pid: int, create_time: float) -> int:
        return self._exec("INSERT INTO tunnels(vm_id, kind, bind, target, pid, create_time, state, created_at) "
                          "VALUES (?,?,?,?,?,?,'up',?)", (vm_id, kind, bind, target, pid, create_time,
                                                         time.time())).lastrowid

    def tunnel_up(self, tunnel_id: int, pid: int, create_time: float) -> None:
        self._exec("UPDATE tunnels SET pid=?, create_time=?, state='up' WHERE id=?", (pid, create_time, tunnel_id))

    def tunnel_down(self, tunnel_id: int) -> None:
        self._exec("UPDATE tunnels SET state='down' WHERE id=?", (tunnel_id,))

    def end_tunnels(self, vm_id: int) -> None:
        self._exec("UPDATE tunnels SET state='down' WHERE vm_id=? AND state='up'", (vm_id,))

    def live_tunnels(self) -> list[dict]:
        return self._rows("SELECT * FROM tunnels WHERE state='up'")

    def live_disks(self) -> list[dict]:
        return self._rows("SELECT * FROM disks WHERE removed_at IS NULL")

"""Hooks only: lease VMs from the fixture daemon, skip what this host cannot do, keep evidence.

- before_all: reap what dead runs left, claim this run's storage, build the
  guest image if needed, then use the running fixture daemon or start one
  (and say which). A heartbeat thread keeps this run's leases alive; if the
  run dies, the daemon destroys its VMs once the owner pid is gone.
- Leases follow scope: one per scenario by default; scenarios tagged
  ``@fixture.vm.shared`` share one VM per feature.
- @requires.<capability> tags skip scenarios with the reason the probe gave.
- after_scenario: when the scenario failed, attach its evidence (each VM's serial console
  and logs, the operator's commands, the daemon's log lines and observer passes of the
  scenario, its lease), end the scenario's lease and prove its VMs are gone.
- Allure results (with an Allure formatter): environment, categories and executor files;
  labels from tags; a failed hook or cleanup (a leak) makes the scenario broken
  (vmfixtures.report.results).
- SIGTERM becomes KeyboardInterrupt so behave runs after_all; an atexit
  handler cleans up if behave never gets there.
- VMFIXTURES_DAEMON=off runs embedded: VMs are booted by this process.
- ``-D backend=qemu|libvirt|multipass`` (or $VMFIXTURES_BACKEND) picks where VMs
  run; an unknown -D key or backend stops the run (exit 2) before anything starts.
"""

import atexit
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

from behave.fixture import fixture, use_fixture, use_fixture_by_tag

from vmfixtures import backends, capabilities
from vmfixtures.errors import ConfigError, VmfError
from vmfixtures.files import read_tail
from vmfixtures.client import Heartbeat, ensure_daemon
from vmfixtures.conformance import Recorder, capability
from vmfixtures.sut import PRODUCTS, Host, open_product
from vmfixtures.procs import process_alive
from vmfixtures import parallel, paths
from vmfixtures.report import evidence, results
from vmfixtures.scope import RunScope
from vmfixtures.testkit import Fixtures, Project

EVIDENCE_DIR = Path("reports/evidence")
LEASE_TTL = 30.0
SHARED_TAG = "fixture.vm.shared"
DRIFT_TAG = "observer.drift"  # scenarios that create drift on purpose
EACH_STEP_TAG = "observer.each-step"  # the observer runs after every step, not only every few seconds
OBSERVER_TAGS = (DRIFT_TAG, EACH_STEP_TAG)


def _say(message):
    print(f"vmfixtures: {message}", file=sys.stderr, flush=True)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _use_daemon():
    return os.environ.get("VMFIXTURES_DAEMON", "").lower() not in ("off", "0", "no")


USERDATA = {"backend": "where VMs run: qemu (default), libvirt or multipass",
            "product": "the product judged: vmfixtures (default), agsekit or virtnbdbackup (disk backups, libvirt)",
            "agsekit": "the agsekit command to judge (default: the one the README's set-up installs)",
            "AllureFormatter.hide_excluded": "true: scenarios the tags did not select are left out of the Allure results"}


def _refuse(message, code=2):
    """Stop the whole run before anything starts: a setting that is not understood is never ignored."""
    print(f"vmfixtures: {message}", file=sys.stderr, flush=True)
    os._exit(code)  # behave turns exceptions in before_all into a "hook error" and runs on


def _userdata(context):
    unknown = sorted(set(context.config.userdata) - set(USERDATA))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in USERDATA.items())
        _refuse(f"unknown -D setting(s) {', '.join(unknown)} (known: {known})")
    product = context.config.userdata.get("product", "vmfixtures")
    if product not in PRODUCTS:
        _refuse(f"-D product: unknown product {product!r} (known: {', '.join(PRODUCTS)})")
    if "agsekit" in context.config.userdata and product != "agsekit":
        _refuse("-D agsekit names the agsekit command; it needs -D product=agsekit")
    context.product_name = product
    context.product_options = {k: v for k, v in context.config.userdata.items() if k == "agsekit"}
    if product == "agsekit":
        from vmfixtures.sut.agsekit import default_command

        command = context.product_options.get("agsekit") or str(default_command())
        if not (shutil.which(command) or Path(command).is_file()):
            _refuse(f"-D product=agsekit: no agsekit at {command} (`./bootstrap test` installs it into "
                    ".venv-agsekit; or give -D agsekit=PATH)", 5)
    if product == "virtnbdbackup" and not shutil.which("virtnbdbackup"):
        _refuse("-D product=virtnbdbackup: no virtnbdbackup on PATH (the Debian package 'virtnbdbackup'; "
                "`./bootstrap test` installs it)", 5)
    try:
        return backends.chosen(context.config.userdata.get("backend"), "-D backend")
    except VmfError as exc:
        _refuse(str(exc), exc.exit_code)


def before_all(context):
    signal.signal(signal.SIGTERM, _terminate)
    backend = _userdata(context)
    os.environ["VMFIXTURES_BACKEND"] = backend  # the CLI and runners this run starts use it too
    context.scope = RunScope(quiet=False, backend=backend)
    run_name = backend if context.product_name == "vmfixtures" else f"{context.product_name}-{backend}"
    context.recorder = Recorder(run_name, {"backend": backend, "product": context.product_name})
    if results.allure_folders(context.config):
        context.report = results.register(backend, context.product_name)
        context.on_cleanup_error = context.report.on_cleanup_error
    for line in context.scope.start():
        _say(f"reaped {line}")
    context.client = None
    context.started_daemon = None
    context.observer_stats = {"healthy": 0, "drift": 0, "findings": 0}
    atexit.register(_finish, context)
    context.capabilities = {"qemu": capabilities.probe_qemu()}
    backend_cap = capabilities.probe_backend(backend)
    context.backend_missing = None
    if not backend_cap.available and backend == "multipass":
        context.backend_missing = f"the multipass backend cannot run here: {backend_cap.reason}"
        _say(f"every scenario skips: {context.backend_missing}")
        return
    if not backend_cap.available:
        _refuse(f"backend {backend}: {backend_cap.reason}", 5)
    if not context.capabilities["qemu"].available:
        return
    driver = context.scope.driver()
    context.backend = driver
    driver.image()  # builds with progress lines when not cached
    accel = driver.accel()
    _say(f"backend {backend}; accelerator {accel.name} ({accel.reason}); storage {context.scope.storage}")
    context.capabilities["kvm"] = capabilities.probe("kvm", accel.name)
    _report_environment(context, driver, accel)
    if _use_daemon():
        with parallel.between_scenarios():
            _connect_daemon(context)
        context.heartbeat = Heartbeat(context.client, context.scope.id, LEASE_TTL / 3).start()
    else:
        _say("VMFIXTURES_DAEMON=off: VMs are booted by this process, without the warm pool")


def _report_environment(context, driver, accel):
    """What ran, for the Allure report (environment.properties) and the conformance record."""
    import platform
    import subprocess

    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    image = driver.image()
    facts = {"backend": driver.name, "accelerator": accel.name, "accelerator.reason": accel.reason,
             "qemu": qemu.strip(), "guest.image": image.key, "product": context.product_name,
             "product.version": _product_version(context), "host.cores": str(os.cpu_count()),
             "python": platform.python_version()}
    facts.update(_image_facts(image))
    if driver.name == "libvirt":
        from vmfixtures.backends.libvirt import connection, uri

        version = connection().getLibVersion()
        facts["libvirt"] = f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000} at {uri()}"
    context.recorder.meta.update(facts)
    for folder in results.allure_folders(context.config):
        results.write_metadata(folder, facts)


def _product_version(context):
    project = Project(context.scope.dir / "projects" / "product-version", context.scope)
    try:
        return open_product(context.product_name, project, context.product_options).version()
    except (OSError, VmfError) as exc:
        return f"unknown ({exc})"


def _image_facts(image):
    """The guest image: its recipe hash (above), kernel, build time, and a hash of what boots (kernel + initrd)."""
    import hashlib

    digest = hashlib.sha256()
    for part in (image.kernel, image.dir / "initrd.img"):
        if part.is_file():
            digest.update(part.read_bytes())
    meta = image.meta
    return {"guest.image.name": meta.get("name", "?"), "guest.image.kernel": meta.get("kernel", "?"),
            "guest.image.built": meta.get("built_at", "?"), "guest.image.boot.sha256": digest.hexdigest()[:16]}


def _connect_daemon(context):
    context.client, started = ensure_daemon(extra_args=parallel.SPEC_DAEMON_ARGS)
    context.started_daemon = context.started_daemon or started
    if started:
        _say(f"started the fixture daemon (pid {started['pid']}) on {context.client.socket_path}")
        for line in started["reclaimed"]:
            _say(f"daemon reclaimed {line}")
    else:
        _say(f"using the running fixture daemon (pid {context.client.alive()['pid']}) on {context.client.socket_path}")


def _open_lease(context, scope, key):
    return context.client.open_lease(scope=scope, scope_key=key, ttl=LEASE_TTL, run_id=context.scope.id)["id"]


def before_feature(context, feature):
    context.feature_lease = None


def _capability(context, name):
    if name == "daemon":  # the fixture daemon is this run's choice, not the host's
        return capabilities.Capability(context.client is not None,
                                       "VMFIXTURES_DAEMON=off: this run boots VMs itself, without the fixture daemon")
    if name not in context.capabilities:
        context.capabilities[name] = capabilities.probe(name, backend=getattr(context, "backend", None))
    return context.capabilities[name]


def before_scenario(context, scenario):
    if getattr(context, "backend_missing", None):
        scenario.skip(reason=context.backend_missing)
        return
    for tag in scenario.effective_tags:
        if tag.startswith("requires."):
            cap = _capability(context, tag.removeprefix("requires."))
            if not cap.available:
                scenario.skip(reason=cap.reason)
                return
    slug = re.sub(r"[^a-z0-9]+", "-", scenario.name.lower()).strip("-")[:60]
    folder, n = context.scope.dir / "projects" / slug, 1
    while folder.exists():  # the examples of an outline share a name: each gets a project of its own
        n += 1
        folder = context.scope.dir / "projects" / f"{slug}-{n}"
    context.project = Project(folder, context.scope)
    context.sut = evidence.OperatorLog(open_product(context.product_name, context.project, context.product_options))
    context.host = Host()
    lacking = context.sut.lacks(capability(scenario.feature.tags))
    if lacking:
        scenario.skip(reason=lacking)
        return
    _take_scenario_lock(context, scenario)
    if context.client is not None and not context.client.alive():
        _connect_daemon(context)  # a scenario may have killed it on purpose
    context.lease = None
    for tag in scenario.effective_tags:
        if tag.startswith("observer.") and tag not in OBSERVER_TAGS:
            raise ConfigError(f"@{tag}: unknown observer tag (known: {', '.join('@' + t for t in OBSERVER_TAGS)})")
    context.step_findings = []
    fixture_tags = [t for t in scenario.effective_tags if t.startswith("fixture.")]
    for tag in fixture_tags:
        if tag not in FIXTURES:
            raise ConfigError(f"@{tag}: unknown fixture tag (known: {', '.join('@' + t for t in FIXTURES)})")
        use_fixture_by_tag(tag, context, FIXTURES)
    if context.lease is None and context.client is not None:
        context.lease = use_fixture(scenario_lease, context, scenario.name)
    context.project.lease = context.lease
    context.scenario_started = time.time()
    context.fixtures = Fixtures(context.scope, context.client)
    context.driver = context.fixtures.driver
    context.pids = {}
    context.boot_ids = {}


def _take_scenario_lock(context, scenario):
    """In a parallel run (`vmfixtures spec`): an @exclusive scenario runs alone, the others side by side.
    Released when the scenario's cleanups are done, its lease's end included."""
    lock = parallel.run_lock()
    if lock is None:
        return
    lock.acquire(exclusive=parallel.EXCLUSIVE_TAG in scenario.effective_tags)
    context.add_cleanup(lock.release)


def after_step(context, step):
    """Under @observer.each-step: an observer pass after every step, its findings kept with the step."""
    scenario = context.scenario
    if EACH_STEP_TAG in scenario.effective_tags and context.client is not None and step.status != "skipped":
        try:
            findings = [f for f in context.client.observe()["findings"] if context.scope.concerns(f.get("path"))]
        except VmfError as exc:  # kept with the step: the scenario's last check names it, step and all
            findings = [{"type": "observer-pass-failed", "evidence": str(exc)}]
        context.step_findings.append((step.name, findings))


def after_scenario(context, scenario):
    try:
        _after_scenario(context, scenario)
    except Exception as exc:
        context.recorder.add(scenario, error=f"{type(exc).__name__}: {exc}")
        _attach_operator_log(context)  # the hook error itself is attached by vmfixtures.report.results
        raise
    context.recorder.add(scenario)


def _after_scenario(context, scenario):
    if not hasattr(context, "fixtures"):
        return
    if scenario.status.has_failed():  # failed, or a step raised something other than an assertion
        _attach_consoles(context, scenario)
        _attach_run_evidence(context, scenario)
    shared = context.lease is not None and context.lease == context.feature_lease
    try:
        if context.client is not None and context.client.alive():
            _check_observer(context, scenario)
    finally:  # cleanup first, whatever the check said: a leaked VM would break the next scenarios
        context.project.stop_backgrounds()  # forwarders and backup loops end before their VMs do
        if context.client is None:
            leftovers = context.scope.destroy_vms()
            assert not leftovers, f"VMs of scenario '{scenario.name}' survived destruction: {leftovers}"
        elif not shared:
            _end_lease(context, context.lease, scenario.name)
        del context.fixtures


def _check_observer(context, scenario):
    """Zero false positives: every observer pass during a healthy scenario must be clean."""
    now = time.time()
    passes = [r for r in context.client.observer_reports()
              if context.scenario_started <= r["started_at"] and r["started_at"] + r["seconds"] <= now]
    if DRIFT_TAG in scenario.effective_tags:
        context.observer_stats["drift"] += len(passes)
        return
    context.observer_stats["healthy"] += len(passes)
    findings = [f for r in passes for f in r["findings"] if context.scope.concerns(f.get("path"))]
    context.observer_stats["findings"] += len(findings)
    assert not findings, f"the observer reported drift during a healthy scenario: {findings}"


def _end_lease(context, lease_id, what):
    info = context.client.lease(lease_id)
    context.client.end_lease(lease_id)
    survivors = [f"{vm['name']} (pid {vm['pid']})" for vm in info["vms"]
                 if (vm["pid"] and process_alive(vm["pid"])) or (Path(vm["storage"]) / vm["name"]).exists()]
    assert not survivors, f"VMs of '{what}' survived the end of their lease: {survivors}"


@fixture
def scenario_lease(context, name):
    """The default: a lease for this scenario alone; after_scenario ends it and proves its VMs gone."""
    yield _open_lease(context, "scenario", name)


@fixture
def shared_vm_lease(context):
    """@fixture.vm.shared: the tagged scenarios of a feature share one lease (so one VM each);
    it ends, and its VMs are proven gone, when the feature ends."""
    if context.client is None:
        yield None  # embedded: VMs live in the run's storage until the scenario's cleanup
        return
    if context.feature_lease is None:
        context.feature_lease = _open_lease(context, "feature", context.feature.name)
        context.add_cleanup(_end_feature_lease, context, context.feature.name, layer="feature")
    context.lease = context.feature_lease
    yield context.lease


def _end_feature_lease(context, name):
    if context.feature_lease and context.client is not None:
        lease, context.feature_lease = context.feature_lease, None
        _end_lease(context, lease, name)


FIXTURES = {SHARED_TAG: shared_vm_lease}  # @fixture.* tags the specification understands


def _attach_consoles(context, scenario):
    try:
        import allure
    except ImportError:  # allure-behave is optional for a plain run
        allure = None
    folder = EVIDENCE_DIR / re.sub(r"[^A-Za-z0-9]+", "-", scenario.name).strip("-")
    for name in context.driver.names():
        for kind, log in backends.backend_for(context.scope.storage, name).evidence(name).items():
            text = read_tail(log)  # a guest may have flooded its console: never read it whole
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}-{log.name}").write_text(text)
            if allure:
                allure.attach(text, name=f"{name} {kind}", attachment_type=allure.attachment_type.TEXT)
            print(f"--- {kind} of {name} (last 40 lines) ---\n" + "\n".join(text.splitlines()[-40:]))


def _attach_operator_log(context):
    sut = getattr(context, "sut", None)
    if isinstance(sut, evidence.OperatorLog) and sut.outcomes and not getattr(context, "operator_log_attached", False):
        results.attach("operator commands", sut.transcript())
        context.operator_log_attached = True


def _attach_run_evidence(context, scenario):
    """The operator's commands, the daemon's log lines and observer passes during the scenario, its lease."""
    _attach_operator_log(context)
    if context.client is None:
        return
    now = time.time()
    lines = evidence.log_lines_between(paths.daemon_home() / "daemon.log", context.scenario_started, now)
    results.attach("fixture daemon log (during the scenario)", "\n".join(lines) or "(nothing logged)")
    try:
        if context.client.alive():
            if context.lease:
                results.attach("lease", json.dumps(context.client.lease(context.lease), indent=1))
            results.attach("observer passes (during the scenario)",
                           evidence.observer_passes(context.client.observer_reports(), context.scenario_started, now))
    except VmfError as exc:
        results.attach("fixture daemon", f"could not be asked: {exc}")


def _finish(context):
    """End every lease of this run and remove its folder; report anything left. Idempotent."""
    if getattr(context, "heartbeat", None):
        context.heartbeat.stop()
    client = getattr(context, "client", None)
    if client is not None and client.alive():
        for lease in client.leases():
            if lease["run_id"] == context.scope.id:
                client.end_lease(lease["id"])
        if context.started_daemon and os.environ.get("VMFIXTURES_KEEP_DAEMON") != "1":
            pid, gone = client.stop(60.0)  # we started it, we stop it; its snapshots stay for the next run
            if not gone:
                _say(f"the fixture daemon (pid {pid}) did not stop within 60s")
            context.client = None
    return context.scope.finish()


def after_all(context):
    stats = getattr(context, "observer_stats", None)
    if stats and context.client is not None:
        _say(f"observer: {stats['healthy']} pass(es) during healthy scenarios, {stats['findings']} finding(s); "
             f"{stats['drift']} pass(es) during drift scenarios")
        Path("reports").mkdir(exist_ok=True)
        part = os.environ.get(parallel.PART_ENV)
        Path(f"reports/observer{'.' + part if part else ''}.json").write_text(json.dumps(stats) + "\n")
    if hasattr(context, "recorder"):
        _say(f"conformance record: {context.recorder.write(Path('reports/conformance'), os.environ.get(parallel.PART_ENV))}")
    if hasattr(context, "scope"):
        leftovers = _finish(context)
        if leftovers:
            _say(f"LEAK after the run: {leftovers}")
            raise AssertionError(f"the run left VMs behind: {leftovers}")

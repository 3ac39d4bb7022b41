"""`embassy drill`: the whole rehearsal on the lab, measured, and its signed report.

lab up (a lab already up is reused) ► harden ► deploy ► a write load into every register on home ►
replication rounds on the drill's own schedule under it ► the incident ► restore at the embassy ► report ►
lab down (unless kept).

The load (embassy.home.load) writes into every register (postgres rows, file-register documents) until the
incident, and logs every write home acknowledged. Rounds run every ROUND_EVERY seconds from the load's
start, each followed by moving the warm standbys' holds to the new verified head
(embassy.replication.hold); the incident comes LOAD_SECONDS after the load started, whatever a round is
doing then (a round running on home dies with it).

The incident, in this order: the write load and the heartbeat are killed (the instant of the incident)
and home's load log is read (the last read of home: what home committed); the warm embassies' WAL
receivers are told home is gone (stopped: a real one would keep calling a dead primary); home's network
is cut, every process of its container killed at once (a power cut) and its disk (the overlay's upper
folder) wiped. A watcher on the lab's bridge counts every frame that tries to reach home's address.

Measures (README, "Reboot the state"):
- RTO per register: incident -> the register restored and its digest equal to the manifest's; in
  total: incident -> the state service answering the smoke queries correctly;
- RPO per register (RPO_METHOD): home's last acknowledged write into it, in the load's log, against the
  newest write of the load that the restored register holds (the age of what is lost);
- lost transactions per register: acknowledged at home and absent from the restored state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from embassy import model
from embassy.drill import report as rpt
from embassy.drill.restore import FILES_ROOT, Outcome, restore
from embassy.drill.watch import attempts
from embassy.errors import DrillFailed, EmbassyError, UserError
from embassy.home import load as home_load
from embassy.home import schema
from embassy.lab.state import LabState
from embassy.replication import manifest
from embassy.replication import replicate as replication
from embassy.replication.dataplane import REGISTERS_ROOT
from embassy.replication.hold import advance_all
from embassy.replication.standby import RECEIVER_UNIT
from embassy.targets import LabTarget

Say = Callable[[str], None]
LOAD_UNIT = "embassy-drill-load"
LOAD_RATE = 10  # transactions a second into each postgres register: steady and bounded (2 shared cores)
FILES_EVERY = 1.0  # seconds between new documents in each file register
LOAD_LOG = "/var/tmp/embassy-drill-load.log"
LOAD_SCRIPT = f"/var/tmp/{LOAD_UNIT}.py"
ROUND_EVERY = 15.0  # the drill's round schedule, from the load's start
LOAD_SECONDS = 40.0  # the incident, this long after the load started (not aligned with the rounds)
RPO_METHOD = ("the load's log of writes home acknowledged, read at the incident: the time of the last one "
              "against the time of the newest one the restored register holds (0 when it holds the last)")
REPORT_KEYS_ENV = "EMBASSY_REPORT_KEYS"


def report_keys() -> Path:
    """Where the controller's report-signing key lives (kept across labs: auditors hold its public half)."""
    explicit = os.environ.get(REPORT_KEYS_ENV)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return Path(explicit) if explicit else base / "embassy" / "report-signing"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Timeline:
    def __init__(self, say: Say) -> None:
        self.steps: list[rpt.Step] = []
        self.say = say

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.say(name)
        start, ok = now(), False
        try:
            yield
            ok = True
        finally:
            self.steps.append(rpt.Step(step=name, start=start, end=now(), ok=ok))


def _ssh(lab: LabState, host: str, command: str, timeout: float = 120, stdin: str | None = None) \
        -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.ssh_argv(host, command), input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)


def load_config(dep: model.Deployment) -> dict[str, Any]:
    regs = [{"name": r.name, "kind": r.kind.value, "database": schema.database_name(r.name),
             "path": f"{REGISTERS_ROOT}/{r.name}"} for r in dep.registers]
    return {"rate": LOAD_RATE, "files_every": FILES_EVERY, "registers": regs}


def start_load(lab: LabState, dep: model.Deployment) -> None:
    """The load on home: postgres registers as postgres, file registers as root (a register's folder is not
    postgres's: measured on the lab, the load died on it); each part logs to its own file."""
    config = load_config(dep)
    code = resources.files("embassy.home").joinpath("load.py").read_text()
    parts = [(LOAD_UNIT, "postgres", "postgres"), (f"{LOAD_UNIT}-files", "root", "files")]
    command = f"sudo install -m 644 /dev/stdin {LOAD_SCRIPT}"
    for unit, user, kind in parts:
        regs = [r for r in config["registers"] if r["kind"] == kind]
        if not regs:
            continue
        log = f"{LOAD_LOG}.{kind}"
        command += (f" && sudo rm -f {log} && (sudo systemctl stop {unit} 2>/dev/null; sudo systemctl reset-failed {unit} "
                    f"2>/dev/null; true) && sudo systemd-run --unit {unit} -p User={user} /usr/bin/python3 {LOAD_SCRIPT} "
                    f"{shlex.quote(json.dumps({**config, 'registers': regs}))} {log}")
    done = _ssh(lab, "home", command, stdin=code)
    if done.returncode != 0:
        raise DrillFailed(f"home: the write load did not start: {done.stderr.strip()[-300:]}")


class Rounds:
    """Replication rounds on the drill's own schedule (every `every` s from the start), each followed by moving
    the warm standbys' holds to the new verified head. The incident stops them without waiting for a round:
    only a hold being moved is waited for (it restarts a standby the restore is about to use)."""

    def __init__(self, dep: model.Deployment, lab: LabState, every: float, say: Say) -> None:
        self.dep, self.lab, self.every, self.say = dep, lab, every, say
        self.stop = threading.Event()
        self.moving = threading.Lock()
        self.rounds: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="drill-rounds", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        start, n = time.monotonic(), 0
        while not self.stop.is_set():
            try:
                last = replication.run_round(self.lab, timeout=300)
            except (UserError, subprocess.TimeoutExpired) as exc:
                last = {"embassies": [{"name": "home", "errors": [str(exc)[:300]]}]}
            if self.stop.is_set():
                return  # a round the incident interrupted: it is not one of the drill's
            errors = [f"{e['name']}: {'; '.join(e['errors'])}" for e in last.get("embassies", []) if e.get("errors")]
            self.say(f"round {last.get('round')}: " + ("; ".join(errors) if errors else "a signed manifest in every vault"))
            self.errors += errors
            self.rounds.append(last)
            with self.moving:
                if self.stop.is_set():
                    return
                try:
                    advance_all(self.dep, LabTarget(self.dep, self.lab), lambda m: self.say(f"  {m}"))
                except (UserError, subprocess.TimeoutExpired) as exc:  # the restore proves anyway, replaying more
                    self.say(f"  holds not moved: {exc}")
            n += 1
            self.stop.wait(max(0.0, start + n * self.every - time.monotonic()))

    def halt(self) -> None:
        self.stop.set()
        with self.moving:  # a hold being moved finishes first
            pass


def incident(lab: LabState, dep: model.Deployment) -> tuple[dt.datetime, str]:
    """Home is lost. Returns (when, home's load log: every write it acknowledged)."""
    from embassy.lab import hosts as lab_hosts
    from embassy.lab import system
    from embassy.lab.state import Proc, cgroup_name

    home = lab.host("home")
    when = now()
    done = _ssh(lab, "home", f"sudo systemctl kill -s KILL {LOAD_UNIT} {LOAD_UNIT}-files embassy-heartbeat; sleep 0.2; "
                             f"sudo sh -c 'cat {LOAD_LOG}.*'", timeout=30)
    detach_standbys(lab, dep)
    # From here on, nothing reads home: cut its network, then a power cut (every process of the
    # container killed at once), then its disk wiped.
    system.run(["ip", "-n", home.netns, "link", "set", "eth0", "down"])
    pids = lab_hosts.cgroup_pids(cgroup_name(lab.lab_id), home.name)
    if home.nspawn:
        pids.add(home.nspawn.pid)
    for pid in sorted(pids):
        started = system.start_time(pid)
        if started is not None:  # by (pid, start time): never a recycled PID
            system.stop(Proc(pid=pid, start_time=started), grace=0)
    if lab_hosts.is_mounted(home.root_dir):
        lab_hosts.umount(home.root_dir)
    system.run(["find", home.upper_dir, "-mindepth", "1", "-delete"])
    if done.returncode != 0 or not home_load.parse_log(done.stdout):
        raise DrillFailed(f"home's load log could not be read at the incident: {done.stderr.strip()[-300:]}")
    return when, done.stdout


def detach_standbys(lab: LabState, dep: model.Deployment) -> None:
    """Tell every warm embassy that home is gone: its WAL receiver is stopped (bounded), as a real one would
    otherwise keep calling a dead primary; what it received stays on its disk for the restore."""
    for emb in dep.embassies:
        if emb.mode is model.Mode.WARM:
            _ssh(lab, lab.host(emb.name).name, f"sudo systemctl stop {RECEIVER_UNIT}", timeout=30)


class Watcher:
    """Counts frames to home's address on the lab's bridge (embassy.drill.watch)."""

    def __init__(self, lab: LabState, address: str) -> None:
        from embassy.lab.network import BRIDGE

        self.out = Path(lab.dir) / "drill-watch-home.json"
        self.out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.switch_netns, sys.executable, "-m", "embassy.drill.watch",
                                      BRIDGE, address, str(self.out)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not self.out.exists() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.out.exists():
            why = self.proc.stderr.read() if self.proc.stderr else ""
            raise DrillFailed(f"the watcher of home's address did not start: {why[-300:]}")

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        seen: dict[str, Any] = json.loads(self.out.read_text())
        return seen


def home_unreached(seen: dict[str, Any], lab: LabState) -> rpt.Verification:
    """The network check: nothing tried to reach home after the incident (a vault closing a connection home
    had opened before it is reported, not counted: embassy.drill.watch.attempts)."""
    tried, leftover = attempts(seen.get("kinds", {}), {v.address for v in lab.vaults})
    detail = f"{tried} frames tried to reach home in {seen['seconds']} s after the incident"
    if tried:
        detail += f" (from {seen['sources']})"
    if leftover:
        detail += (f"; {leftover} frames were vaults closing connections home had opened before the incident "
                   f"(ARP requests and TCP segments without SYN: {seen['kinds']})")
    return rpt.Verification(object=f"network:home {lab.host('home').address}", ok=tried == 0, detail=detail)


def _digest_text(value: dict[str, Any] | None) -> str | None:
    if not value:
        return None
    if "merkle_root" in value:
        return f"merkle:{value['merkle_root']}"
    tables = json.dumps(value.get("tables", {}), sort_keys=True, separators=(",", ":")).encode()
    return f"tables-sha256:{hashlib.sha256(tables).hexdigest()}"


def _ts(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    text = text.strip().replace(" ", "T")
    if text[-3] in "+-" and text[-6] != ":":  # PostgreSQL prints +00 for the zone
        text += ":00"
    return dt.datetime.fromisoformat(text)


def host_tool_versions(lab: LabState, embassy: str) -> dict[str, str]:
    done = _ssh(lab, lab.host(embassy).name, "psql --version | head -1; pgbackrest version; restic version", timeout=30)
    lines = done.stdout.strip().splitlines()
    names = ("postgresql", "pgbackrest", "restic")
    return {name: line.strip() for name, line in zip(names, lines, strict=False)}


def rpo_of(acked: list[tuple[int, float]], restored: int | None) -> tuple[float | None, int | None]:
    """(RPO seconds, lost writes) of a register: home's acknowledged writes (seq, time) against the newest
    seq the restored register holds. A restored state older than every logged write is measured from the
    first of them (a lower bound: the log starts with this drill's load)."""
    if not acked or restored is None:
        return None, None
    last_seq, last_t = acked[-1]
    if restored >= last_seq:
        return 0.0, 0
    times = dict(acked)
    held_t = times.get(restored, acked[0][1])
    return round(max(0.0, last_t - held_t), 3), last_seq - restored


def restored_newest(lab: LabState, out: Outcome, reg: str, kind: str) -> int | None:
    """The newest load write (its seq) that the restored register holds; -1: none; None: not readable."""
    if kind == model.RegisterKind.POSTGRES.value:
        if not out.port:
            return None
        command = (f"sudo runuser -u postgres -- psql -X -A -t -q -p {out.port} -d {schema.database_name(reg)} "
                   f"-c {shlex.quote(home_load.newest_sql(reg))}")
    else:
        folder = f"{FILES_ROOT}{REGISTERS_ROOT}/{reg}/{home_load.FOLDER}"
        command = f"sudo ls {folder} 2>/dev/null | grep -E '^[0-9]+[.]json$' | sort | tail -1 | cut -d. -f1; true"
    done = _ssh(lab, lab.host(out.embassy).name, command, timeout=60)
    text = done.stdout.strip()
    if done.returncode != 0:
        return None
    return int(text) if text.lstrip("-").isdigit() else -1


def measure(dep: model.Deployment, out: Outcome, incident_mono: float, home_log: str,
            newest: Callable[[str, str], int | None]) -> list[rpt.RegisterResult]:
    """Per register: RTO, and RPO and lost writes (rpo_of) from home's load log and `newest(register, kind)`, the
    newest load write the restored register holds (restored_newest on the lab)."""
    emb = dep.embassy(out.embassy)
    acked = home_load.parse_log(home_log)
    results = []
    for reg in out.registers:
        spec = next(r for r in dep.registers if r.name == reg.name)
        rto = round(reg.done_at - incident_mono, 3) if reg.done_at else None
        rpo: float | None = None
        lost = None
        if reg.restored:
            rpo, lost = rpo_of(acked.get(reg.name, []), newest(reg.name, reg.kind))
        results.append(rpt.RegisterResult(
            name=reg.name, kind=reg.kind, priority=reg.priority, verified=reg.verified, restored=reg.restored,
            rto_seconds=rto, rpo_seconds=rpo, rpo_method=RPO_METHOD, lost_transactions=lost,
            objective=rpt.Objective(rto_seconds=spec.rto_seconds, rpo_seconds=dep.rpo_bound(spec, emb)),
            digest=_digest_text(reg.digest), manifest_digest=_digest_text(reg.manifest_digest), proof=reg.proof))
    return results


def evidence(out: Outcome, dep: model.Deployment,
             lab: LabState | None) -> tuple[list[rpt.Verification], rpt.ManifestEvidence | None]:
    from embassy.replication.verify import public_key_pem

    checks = []
    if out.verification:
        checks += [rpt.Verification(object=c["object"], ok=c["ok"], detail=c.get("reason", ""))
                   for c in out.verification.checked]
    for reg in out.registers:
        if reg.digest is not None:
            checks.append(rpt.Verification(object=f"digest:{reg.name}", ok=reg.verified,
                                           detail=f"{reg.method}: recomputed {_digest_text(reg.digest)}"))
    if out.smoke:
        checks.append(rpt.Verification(object=f"smoke:{out.service_url}", ok=out.service_ok_at is not None,
                                       detail=f"{len(out.smoke)} queries: " + ", ".join(
                                           f"{p} {a[0]}" for p, a in out.smoke.items())))
    found = None
    if out.manifest and out.chain_head:
        key = manifest.key_id(manifest.load_public_key(public_key_pem(dep, lab)))
        found = rpt.ManifestEvidence(key=out.manifest.key, sha256=out.manifest.sha256, round=out.manifest.round,
                                     chain_head=rpt.ChainHead(round=out.chain_head.round, sha256=out.chain_head.sha256),
                                     signature_ok=True, public_key_fingerprint=key)
    return checks, found


def failure_of(error: EmbassyError, out: Outcome) -> rpt.Failure:
    failed = out.verification.first_failure if out.verification and out.verification.first_failure else None
    obj = failed["object"] if failed else (error.message.split(":", 1)[0] if ":" in error.message else out.embassy)
    return rpt.Failure.of(obj, error.message, type(error))


def drill(dep: model.Deployment, report_dir: Path, *, embassy: str | None = None, keep_lab: bool = False,
          size_mb: float | None = None, harden: bool = True, custody: Path | bool = True,
          say: Say = lambda _m: None) -> rpt.Report:
    """Run the rehearsal and write its signed report into `report_dir`; returns the report.

    custody: restore from officials' shares only (custody/drill.py): True puts the sheets in the lab's
    folder, a Path puts them there, False restores with the secrets the deploy left in place."""
    from embassy import deploy as deploy_lib
    from embassy.harden import harden_target
    from embassy.lab import lifecycle
    from embassy.lab.state import lab_state, load_state

    name = embassy or next((e.name for e in dep.embassies if e.mode is model.Mode.WARM), dep.embassies[0].name)
    emb = dep.embassy(name) if name in {e.name for e in dep.embassies} else None
    if emb is None:
        from embassy.errors import EmbassyUnknown

        raise EmbassyUnknown(f"stack '{dep.stack}' has no embassy '{name}'",
                             f"use one of: {', '.join(e.name for e in dep.embassies)}")
    started_at = now()
    timeline = Timeline(say)
    failures: list[rpt.Failure] = []
    hardening: dict[str, int | None] = {}
    # Anything failing before the incident is an error of the setup (UserError, exit 1 or 2), not a verdict.
    with timeline.step("plan: the desired state this drill rehearses (Pulumi program under mocks)"):
        from embassy.plan import compute_plan

        plan = rpt.plan_hash(compute_plan(model.project_root(), dep.stack))
    with timeline.step("lab up (reused when already up)"):
        existing = load_state()
        if existing is not None and existing.stack == dep.stack and not lifecycle.is_up(existing):
            say("  the lab is broken (e.g. left by a kept drill): down first")
            lifecycle.down(say=lambda m: say(f"  {m}"))
        lifecycle.up(dep, say=lambda m: say(f"  {m}"))
        lab = lab_state(dep.stack)
    target = LabTarget(dep, lab)
    if harden:
        with timeline.step("harden every host (roles/site.yml), Lynis before and after"):
            hardening = {r.name: r.lynis_after for r in harden_target(target, lambda m: say(f"  {m}"),
                                                                                  before_too=False)}
    with timeline.step("deploy: home state, replication agents, embassy hosts"):
        deploy_lib.run(target, model.project_root(), size_mb=size_mb, say=lambda m: say(f"  {m}"))
    drill_kit = None
    if custody is not False:
        from embassy.custody import drill as custody_drill

        sheets = custody if isinstance(custody, Path) else Path(lab.dir) / "custody"
        with timeline.step(f"custody: seal each embassy's restore secrets in its vault, {custody_drill.OFFICIALS} "
                           f"officials' sheets, then withdraw every restore secret from the controller and {name}'s host"):
            drill_kit = custody_drill.prepare(dep, target, name, sheets, lambda m: say(f"  {m}"))
    with timeline.step(f"write load into every register on home ({LOAD_RATE} tx/s per database, a document every "
                       f"{FILES_EVERY:g} s per file register), rounds every {ROUND_EVERY:g} s, for {LOAD_SECONDS:g} s"):
        start_load(lab, dep)
        rounds = Rounds(dep, lab, ROUND_EVERY, lambda m: say(f"  {m}"))
        rounds.start()
        time.sleep(LOAD_SECONDS)
        if not rounds.rounds or rounds.errors:
            rounds.halt()
            raise DrillFailed("replication under the load failed: " + ("; ".join(rounds.errors)[:400] or "no round ended"))
    with timeline.step("incident: home's writers stopped, its disk wiped, its network cut"):
        incident_mono = time.monotonic()
        rounds.halt()
        incident_at, home_log = incident(lab, dep)
    last = {name: acked[-1] for name, acked in home_load.parse_log(home_log).items() if acked}
    say("  home's last acknowledged writes: " + ", ".join(f"{n} #{seq}" for n, (seq, _) in sorted(last.items())))
    watcher = Watcher(lab, lab.host("home").address)
    custody_error: EmbassyError | None = None
    try:
        if drill_kit is not None:
            try:
                with timeline.step(f"custody: open bundle version {drill_kit.version} from {custody_drill.THRESHOLD} "
                                   f"of {custody_drill.OFFICIALS} sheets; its secrets to {name}'s host"):
                    custody_drill.open_and_apply(dep, target, name, drill_kit, lambda m: say(f"  {m}"))
            except EmbassyError as exc:  # the restore below then fails without the secrets: both are reported
                custody_error = exc
        restored = restore(dep, target, name, say=lambda m: say(f"  {m}"))
    finally:
        seen = watcher.stop()
    timeline.steps += [rpt.Step(step=f"restore: {s.name}", start=s.start, end=s.end, ok=s.ok) for s in restored.steps]
    registers = measure(dep, restored, incident_mono, home_log,
                        lambda reg, kind: restored_newest(lab, restored, reg, kind))
    checks, found = evidence(restored, dep, lab)
    checks.append(home_unreached(seen, lab))
    if drill_kit is not None:
        held = custody_drill.controller_holds_restore_secrets(dep, target)
        checks.append(rpt.Verification(
            object="custody:restore secrets", ok=custody_error is None and not held,
            detail=f"restored only from {custody_drill.THRESHOLD} of {custody_drill.OFFICIALS} officials' shares of "
                   f"bundle version {drill_kit.version}: {len(drill_kit.withdrawn)} restore secrets withdrawn from the "
                   f"controller and {name}'s host before the incident; on the controller now: {', '.join(held) or 'none'}"
                   + (f"; {custody_error.message}" if custody_error else "")))
        if custody_error is not None:
            failures.append(rpt.Failure.of("custody", custody_error.message, type(custody_error)))
    if restored.error:
        failures.append(failure_of(restored.error, restored))
    total = round(restored.service_ok_at - incident_mono, 3) if restored.service_ok_at else None
    rpos = [r.rpo_seconds for r in registers if r.rpo_seconds is not None]
    versions = {**rpt.controller_tool_versions(), **host_tool_versions(lab, name)}
    report = rpt.Report.build(
        stack=dep.stack, embassy=name, mode=emb.mode.value, incident_at=incident_at, started_at=started_at,
        finished_at=now(), rto_seconds=total, rpo_seconds=max(rpos) if rpos and len(rpos) == len(registers) else None,
        registers=registers, timeline=timeline.steps, tool_versions=versions, manifest=found, hardening=hardening,
        freshness=restored.as_json()["freshness"],
        verifications=checks, failures=failures, plan_hash=plan)
    rpt.write_report(report, report_dir, report_keys())
    if not keep_lab:
        say("lab down")
        lifecycle.down()
    return report


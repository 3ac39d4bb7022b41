"""`embassy drill`: the whole rehearsal on the lab, measured, and its signed report.

lab up (a lab already up is reused) ► harden ► deploy ► a write load into every register on home ►
replication rounds on the drill's own schedule under it ► the incident ► restore at the embassy ► report ►
lab down (unless kept).

The load (embassy.home.load) writes into every register (postgres rows, file-register documents) until the
incident, and logs every write home acknowledged. Rounds run every ROUND_EVERY seconds from the load's
start, each followed by moving the warm standbys' holds to the new verified head
(embassy.replication.hold); the incident comes LOAD_SECONDS plus a random part of one round period after
the load started, whatever a round is doing then (a round running on home dies with it).

The incident, in this order: the kernel-side watch of home's address is put in place (drill/watch.py:
nftables counters on the lab bridge); the write load and the heartbeat are killed (the instant of the
incident) and home's load log is read (the last read of home: what home committed); the warm embassies'
WAL receivers are told home is gone (stopped: a real one would keep calling a dead primary); every
process of home's container is killed at once (a power cut), while its network is still up so that its
kernel closes their connections and the peers close theirs (none is left to call home later); the
counters are snapshotted, home's network is cut and its disk (the overlay's upper folder) wiped. Every
frame toward home counted from the cut until the report is written fails the drill.

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
import random
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from embassy import model
from embassy.drill import publish
from embassy.drill import report as rpt
from embassy.drill.restore import FILES_ROOT, Outcome, restore
from embassy.drill.watch import Watch
from embassy.errors import DrillFailed, EmbassyError, UserError
from embassy.home import load as home_load
from embassy.home import schema
from embassy.lab.state import LabState
from embassy.replication import manifest
from embassy.replication import replicate as replication
from embassy.replication.dataplane import REGISTERS_ROOT
from embassy.replication.hold import advance_all
from embassy.replication.standby import RECEIVER_UNIT
from embassy.targets import LabTarget, run_host

if TYPE_CHECKING:
    from rich.console import Console

Say = Callable[[str], None]
LOAD_UNIT = "embassy-drill-load"
LOAD_RATE = 10  # transactions a second into each postgres register: steady and bounded (2 shared cores)
FILES_EVERY = 1.0  # seconds between new documents in each file register
LOAD_LOG = "/var/tmp/embassy-drill-load.log"
LOAD_SCRIPT = f"/var/tmp/{LOAD_UNIT}.py"
ROUND_EVERY = 15.0  # the drill's round schedule, from the load's start
LOAD_SECONDS = 40.0  # the incident, at least this long after the load started...
# ...and a random part of one round period more, drawn per drill: the incident falls at any phase of the rounds'
# schedule, so that no drill's RPO comes from a phase chosen once (a fixed delay would always hit the same one).
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
    return run_host(lab.ssh_argv(host, command), stdin=stdin, timeout=timeout)


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
                last = replication.run_round(LabTarget(self.dep, self.lab), timeout=300)
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


def incident(lab: LabState, dep: model.Deployment, watch: Watch | None = None) -> tuple[dt.datetime, str]:
    """Home is lost. Returns (when, home's load log: every write it acknowledged)."""
    from embassy.lab import hosts as lab_hosts
    from embassy.lab import system
    from embassy.lab.state import Proc, cgroup_name

    home = lab.host("home")
    when = now()
    done = _ssh(lab, "home", f"sudo systemctl kill -s KILL {LOAD_UNIT} {LOAD_UNIT}-files embassy-heartbeat; sleep 0.2; "
                             f"sudo sh -c 'cat {LOAD_LOG}.*'", timeout=30)
    detach_standbys(lab, dep)
    # From here on, nothing reads home. A power cut: every process of the container killed at once;
    # home's kernel, still on the network a moment longer, closes their connections and the peers close
    # theirs, so that nothing is left that would call home after its link is cut (watch parts below).
    pids = lab_hosts.cgroup_pids(cgroup_name(lab.lab_id), home.name)
    if home.nspawn:
        pids.add(home.nspawn.pid)
    for pid in sorted(pids):
        started = system.start_time(pid)
        if started is not None:  # by (pid, start time): never a recycled PID
            system.stop(Proc(pid=pid, start_time=started), grace=0)
    closing = close_home_connections(lab, home.address)
    if watch is not None:
        watch.closing = closing
        watch.mark_cut()  # every frame toward home from here on fails the drill
    system.run(["ip", "-n", home.netns, "link", "set", "eth0", "down"])
    if lab_hosts.is_mounted(home.root_dir):
        lab_hosts.umount(home.root_dir)
    system.run(["find", home.upper_dir, "-mindepth", "1", "-delete"])
    if done.returncode != 0 or not home_load.parse_log(done.stdout):
        raise DrillFailed(f"home's load log could not be read at the incident: {done.stderr.strip()[-300:]}")
    return when, done.stdout


def detach_standbys(lab: LabState, dep: model.Deployment) -> None:
    """Tell every warm embassy that home is gone: its WAL receiver is stopped (bounded), as a real one would
    otherwise keep calling a dead primary; what it received stays on its disk for the restore."""
    warm = [lab.host(e.name).name for e in dep.embassies if e.mode is model.Mode.WARM]
    with ThreadPoolExecutor(max(1, len(warm))) as pool:  # one embassy's host does not wait for another's
        list(pool.map(lambda host: _ssh(lab, host, f"sudo systemctl stop {RECEIVER_UNIT}", timeout=30), warm))


def peers_of(lab: LabState, address: str) -> dict[str, list[str]]:
    """Per lab namespace other than home's: its TCP sockets whose peer is `address`, in a state that may still send
    (TIME-WAIT sends nothing unless its peer does)."""
    found: dict[str, list[str]] = {}
    others = [lab.controller_netns] + [h.netns for h in lab.hosts if h.name != "home"] + [v.netns for v in lab.vaults]
    for netns in others:
        done = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htan"], capture_output=True, text=True,
                              timeout=10, check=False)
        for line in done.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 5 and cols[0] != "TIME-WAIT" and cols[4].rsplit(":", 1)[0].strip("[]") in (
                    address, f"::ffff:{address}"):
                found.setdefault(netns, []).append(f"{cols[0]} {cols[3]} -> {cols[4]}")
    return found


def close_home_connections(lab: LabState, address: str, bound: float = 5.0) -> str:
    """After home's processes died (its kernel still on the network): wait, bounded, until no socket elsewhere in the
    lab is still connected to home; one left at the bound is destroyed at its peer (`ss -K`: its reset still reaches
    home). A socket still connected to home after the cut would call it later (a FIN or a retransmission, after an
    ARP request): removed here, at its cause, not filtered from the watch. Returns what was done, for the report."""
    start = time.monotonic()
    first = peers_of(lab, address)
    left = first
    while left and time.monotonic() - start < bound:
        time.sleep(0.1)
        left = peers_of(lab, address)
    for netns in left:
        subprocess.run(["ip", "netns", "exec", netns, "ss", "-K", "-tn", "dst", address], capture_output=True,
                       timeout=10, check=False)
    still = peers_of(lab, address) if left else {}
    if still:
        raise DrillFailed(f"connections to home are still open after the incident: {still}",
                          "see which process holds them; it would call home after the cut")
    opened = sum(len(v) for v in first.values())
    text = (f"home's processes killed with its link up: {opened} connections to home elsewhere in the lab were "
            f"closed by home's kernel and their peers in {time.monotonic() - start:.1f} s")
    if left:
        text += f"; {sum(len(v) for v in left.values())} destroyed at their peer after {bound:g} s (ss -K): {left}"
    return text


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
            digest=_digest_text(reg.digest), manifest_digest=_digest_text(reg.manifest_digest),
            proof=rpt.Proof.model_validate(reg.proof) if reg.proof else None))
    return results


def manifest_signature_ok(out: Outcome, public: Ed25519PublicKey) -> bool:
    """Whether the manifest the restore trusted carries a valid signature by `public`: checked again here on the
    bytes the restore read, so the report states what the signature says, not what the restore assumed."""
    if out.manifest is None or out.manifest_bytes is None:
        return False
    try:
        again = manifest.verify(out.manifest.key, out.manifest_bytes, public)
    except manifest.ManifestError:
        return False
    return again.sha256 == out.manifest.sha256 and again.body == out.manifest.body


def checked_what(obj: str) -> str:
    """What a vault check (replication/verify.py) proves, from the object it names."""
    if obj.startswith("vault:") and obj.endswith("/freshness"):
        return ("the head manifest is no older than the other embassies' heads by more than an objective "
                "(not rolled back or frozen)")
    if obj.startswith("host:") and obj.endswith("/key-generation"):
        return "the embassy host reads the repositories of the key generation the manifest names"
    if obj == "pgbackrest:repo":
        return "`pgbackrest verify`: the checksum of every WAL segment and backup file in the repository"
    if obj.startswith("pgbackrest:backup/"):
        return "the base backup the manifest names is in the repository"
    if obj.startswith("pgbackrest:archive/"):
        return "the repository holds the WAL up to the segment the manifest names"
    if obj.startswith("restic:") and obj.endswith("/content"):
        return "the snapshot, restored in scratch space, has the digest the manifest names"
    if obj.startswith("restic:") and "/snapshots/" in obj:
        return "the snapshot the manifest names is in the repository"
    if obj.startswith("restic:"):
        return "`restic check`: the repository's structure, and a rotating fifth of its data read back"
    return ""


def vault_checks(checked: list[dict[str, Any]]) -> list[rpt.Verification]:
    """The vault's checks as report rows: one row per object (a repeated check of it is one row, failed if any
    failed), the manifests that verified as one row, each row saying what it checked."""
    rows: dict[str, rpt.Verification] = {}
    manifests: list[str] = []
    for c in checked:
        obj, ok, reason = c["object"], bool(c["ok"]), c.get("reason", "")
        if ok and obj.startswith(manifest.PREFIX):
            manifests.append(obj)
            continue
        if obj in rows and (rows[obj].ok <= ok):
            continue  # the same check again: one row, the worse outcome kept
        what = checked_what(obj)
        detail = f"{what}: {reason}" if reason and what else (reason or what)
        rows[obj] = rpt.Verification(object=obj, ok=ok, detail=detail)
    head: list[rpt.Verification] = []
    if manifests:
        first, last = sorted(manifests)[0], sorted(manifests)[-1]
        head.append(rpt.Verification(
            object=first if first == last else f"{first} .. {last.rsplit('/', 1)[-1]}", ok=True,
            detail=f"{len(set(manifests))} manifests: each signed by home's key, in canonical form, and linked to the "
                   "one before (the chain)"))
    return head + list(rows.values())


def evidence(out: Outcome, dep: model.Deployment, lab: LabState | None,
             public: Ed25519PublicKey | None = None) -> tuple[list[rpt.Verification], rpt.ManifestEvidence | None]:
    """The report's verification rows and the manifest evidence; `public`: home's manifest key (default: the
    stack's, or the one the lab recorded)."""
    from embassy.replication.verify import public_key_pem

    checks = vault_checks(out.verification.checked) if out.verification else []
    for reg in out.registers:
        if reg.digest is not None:
            checks.append(rpt.Verification(
                object=f"digest:{reg.name}", ok=reg.verified,
                detail=f"the register's digest recomputed after the restore ({reg.method}) against the manifest's: "
                       f"{_digest_text(reg.digest)}"))
    if out.smoke:
        checks.append(rpt.Verification(object=f"smoke:{out.service_url}", ok=out.service_ok_at is not None,
                                       detail=f"the state service answers {len(out.smoke)} queries as home did: " + ", ".join(
                                           f"{p} {a[0]}" for p, a in out.smoke.items())))
    found = None
    if out.manifest and out.chain_head:
        if public is None:
            public = manifest.load_public_key(public_key_pem(dep, lab))
        found = rpt.ManifestEvidence(key=out.manifest.key, sha256=out.manifest.sha256, round=out.manifest.round,
                                     chain_head=rpt.ChainHead(round=out.chain_head.round, sha256=out.chain_head.sha256),
                                     signature_ok=manifest_signature_ok(out, public),
                                     public_key_fingerprint=manifest.key_id(public))
        if not found.signature_ok:
            checks.append(rpt.Verification(object=out.manifest.key, ok=False,
                                           detail="its signature does not verify on the bytes the restore used"))
    return checks, found


def where_lab(lab: LabState, size_mb: float | None, custody: bool) -> rpt.Where:
    """Where this drill ran: the lab on this machine, with the rehearsal's synthetic registers."""
    import socket

    from embassy.custody import drill as custody_drill
    from embassy.home.generator import Spec

    return rpt.Where(
        target="lab", data="synthetic", data_size_mb=size_mb if size_mb is not None else Spec().size_mb,
        description=f"the lab (id {lab.lab_id}) on one machine ({socket.gethostname()}): home and each embassy a "
                    "systemd-nspawn container, each vault a SeaweedFS server, on a private bridge",
        custody=(f"restore secrets opened from {custody_drill.THRESHOLD} of {custody_drill.OFFICIALS} officials' sheets; "
                 "the officials were simulated by the drill (it issued the sheets and typed them in)") if custody
        else "no custody: the restore used the secrets the deploy left on the embassy host",
        officials_simulated=True if custody else None)


def write_watched(fields: dict[str, Any], watch: Watch, report_dir: Path) -> rpt.Report:
    """Build and write the report with the watch read last; if a frame was counted while it was being written,
    it is written again with it (so the watch covers the drill until its report exists)."""
    for _ in range(3):
        try:
            watched: dict[str, Any] | None = watch.result()
            failures = list(fields["failures"])
        except DrillFailed as exc:  # the counters were tampered with or are gone: nothing is proven
            watched, failures = None, [*fields["failures"], rpt.Failure.of(rpt.WATCH_OBJECT, exc.message, DrillFailed)]
        report = rpt.Report.build(**{**fields, "failures": failures, "watch": watched, "finished_at": now()})
        publish.write_report(report, report_dir, report_keys())
        if watched is None or watch.snapshot().packets == watch.history[-2].packets:
            return report
    return report


def failure_of(error: EmbassyError, out: Outcome) -> rpt.Failure:
    failed = out.verification.first_failure if out.verification and out.verification.first_failure else None
    obj = failed["object"] if failed else (error.message.split(":", 1)[0] if ":" in error.message else out.embassy)
    return rpt.Failure.of(obj, error.message, type(error))


def drill(dep: model.Deployment, report_dir: Path, *, embassy: str | None = None, keep_lab: bool = False,
          size_mb: float | None = None, harden: bool = True, custody: Path | bool = True,
          say: Say = lambda _m: None, console: Console | None = None) -> rpt.Report:
    """Run the rehearsal and write its signed report into `report_dir`; returns the report.

    console: where harden and deploy show their progress live, when it is a terminal (else `say` gets
    a heartbeat line at least every 30 s).

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
                                                                                  before_too=False, console=console)}
    with timeline.step("deploy: home state, replication agents, embassy hosts"):
        deploy_lib.run(target, model.project_root(), size_mb=size_mb, say=lambda m: say(f"  {m}"), console=console)
    drill_kit = None
    if custody is not False:
        from embassy.custody import drill as custody_drill

        sheets = custody if isinstance(custody, Path) else Path(lab.dir) / "custody"
        with timeline.step(f"custody: seal each embassy's restore secrets in its vault, {custody_drill.OFFICIALS} "
                           f"officials' sheets, then withdraw every restore secret from the controller and {name}'s host"):
            drill_kit = custody_drill.prepare(dep, target, name, sheets, lambda m: say(f"  {m}"))
    load_seconds = round(LOAD_SECONDS + random.SystemRandom().uniform(0, ROUND_EVERY), 1)
    with timeline.step(f"write load into every register on home ({LOAD_RATE} tx/s per database, a document every "
                       f"{FILES_EVERY:g} s per file register), rounds every {ROUND_EVERY:g} s, for {load_seconds:g} s "
                       f"(the incident's time drawn at random within one round period)"):
        start_load(lab, dep)
        rounds = Rounds(dep, lab, ROUND_EVERY, lambda m: say(f"  {m}"))
        rounds.start()
        time.sleep(load_seconds)
        if not rounds.rounds or rounds.errors:
            rounds.halt()
            raise DrillFailed("replication under the load failed: " + ("; ".join(rounds.errors)[:400] or "no round ended"))
    with timeline.step("read each embassy's last restore test (signed records in its vault)"):
        from embassy.assurance.status import last_restore_tests

        restore_tests = last_restore_tests(dep, target)
    with timeline.step("incident: home's writers stopped, its connections closed, its network cut, its disk wiped"):
        watch = Watch.start(lab)  # frames toward home counted in the kernel from the incident's first step
        incident_mono = time.monotonic()
        rounds.halt()
        incident_at, home_log = incident(lab, dep, watch)
    last = {name: acked[-1] for name, acked in home_load.parse_log(home_log).items() if acked}
    say("  home's last acknowledged writes: " + ", ".join(f"{n} #{seq}" for n, (seq, _) in sorted(last.items())))
    custody_error: EmbassyError | None = None
    if drill_kit is not None:
        try:
            with timeline.step(f"custody: open bundle version {drill_kit.version} from {custody_drill.THRESHOLD} "
                               f"of {custody_drill.OFFICIALS} sheets; its secrets to {name}'s host"):
                custody_drill.open_and_apply(dep, target, name, drill_kit, lambda m: say(f"  {m}"))
        except EmbassyError as exc:  # the restore below then fails without the secrets: both are reported
            custody_error = exc
    restored = restore(dep, target, name, say=lambda m: say(f"  {m}"))
    timeline.steps += [rpt.Step(step=f"restore: {s.name}", start=s.start, end=s.end, ok=s.ok) for s in restored.steps]
    registers = measure(dep, restored, incident_mono, home_log,
                        lambda reg, kind: restored_newest(lab, restored, reg, kind))
    checks, found = evidence(restored, dep, lab)
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
    fields = dict(
        stack=dep.stack, embassy=name, mode=emb.mode.value, incident_at=incident_at, started_at=started_at,
        rto_seconds=total, rpo_seconds=max(rpos) if rpos and len(rpos) == len(registers) else None,
        registers=registers, timeline=timeline.steps, tool_versions=versions, manifest=found, hardening=hardening,
        freshness=restored.as_json()["freshness"],
        verifications=checks, failures=failures, plan_hash=plan,
        where=where_lab(lab, size_mb, drill_kit is not None), restore_tests=restore_tests)
    report = write_watched(fields, watch, report_dir)  # the watch is read last, as the report is written
    watch.remove()
    if not keep_lab:
        say("lab down")
        lifecycle.down()
    return report


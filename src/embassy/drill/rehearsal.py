"""`embassy drill`: the whole rehearsal on the lab, measured, and its signed report.

lab up (a lab already up is reused) ► harden ► deploy ► a steady, bounded write load on home ►
replication rounds under it ► the incident ► restore at the embassy ► report ► lab down (unless kept).

The incident, in this order: the kernel-side watch of home's address is put in place (drill/watch.py:
nftables counters on the lab bridge); the write load and the heartbeat are killed and home's last
committed heartbeat and load transaction are read (the last read of home); the warm standbys are told
home is gone (primary_conninfo emptied, their WAL receivers closed: a real standby would keep calling a
dead primary); every process of home's container is killed at once (a power cut), while its network is
still up so that its kernel closes their connections and the peers close theirs (none is left to call
home later); the counters are snapshotted, home's network is cut and its disk (the overlay's upper
folder) wiped. Every frame toward home counted from the cut until the report is written fails the drill.

Measures (README, "Reboot the state"):
- RTO per register: incident -> the register restored and its digest equal to the manifest's; in
  total: incident -> the state service answering the smoke queries correctly;
- RPO per postgres register: home's last committed heartbeat - the newest heartbeat restored;
  per file register: incident - the time of the restored snapshot (any later change would be lost);
- lost transactions: the write load's last committed id at home - the newest restored.
The write load writes to `embassy_monitor.drill_load`, never to a register: a register's digest stays
the one its manifest signed (a promoted standby is past the digest LSN).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from embassy import model
from embassy.drill import report as rpt
from embassy.drill.restore import Outcome, restore
from embassy.drill.watch import Watch
from embassy.errors import DrillFailed, EmbassyError
from embassy.lab.state import LabState
from embassy.replication import manifest
from embassy.replication import replicate as replication
from embassy.targets import LabTarget

Say = Callable[[str], None]
LOAD_UNIT = "embassy-drill-load"
LOAD_RATE = 10  # transactions a second: steady and bounded (2 shared cores)
LOAD_CODE = """
import sys, time, psycopg
rate = float(sys.argv[1])
with psycopg.connect("host=/var/run/postgresql dbname=embassy_monitor", autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS drill_load (id bigserial PRIMARY KEY, ts timestamptz NOT NULL "
                 "DEFAULT clock_timestamp(), payload text NOT NULL)")
    while True:
        conn.execute("INSERT INTO drill_load (payload) VALUES (repeat(md5(random()::text), 8))")
        time.sleep(1 / rate)
"""
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


def start_load(lab: LabState) -> None:
    done = _ssh(lab, "home", f"sudo install -m 644 /dev/stdin /var/tmp/{LOAD_UNIT}.py && "
                             f"sudo systemctl stop {LOAD_UNIT} 2>/dev/null; sudo systemctl reset-failed {LOAD_UNIT} 2>/dev/null; "
                             f"sudo systemd-run --unit {LOAD_UNIT} -p User=postgres /usr/bin/python3 "
                             f"/var/tmp/{LOAD_UNIT}.py {LOAD_RATE}", stdin=LOAD_CODE)
    if done.returncode != 0:
        raise DrillFailed(f"home: the write load did not start: {done.stderr.strip()[-300:]}")


def replicate_rounds(lab: LabState, rounds: int, say: Say) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for n in range(rounds):
        if n:
            time.sleep(6)  # rounds further apart than the tightest RPO: as the timer spaces them
        last = replication.run_round(lab)
        errors = [f"{e['name']}: {'; '.join(e['errors'])}" for e in last.get("embassies", []) if e.get("errors")]
        say(f"round {last.get('round')}: " + ("; ".join(errors) if errors else "a signed manifest in every vault"))
        if errors:
            raise DrillFailed(f"replication round {last.get('round')} failed: {'; '.join(errors)[:400]}")
    return last


def incident(lab: LabState, dep: model.Deployment, watch: Watch | None = None) -> tuple[dt.datetime, str, int]:
    """Home is lost. Returns (when, home's last committed heartbeat, the load's last committed id)."""
    from embassy.lab import hosts as lab_hosts
    from embassy.lab import system
    from embassy.lab.state import Proc, cgroup_name

    home = lab.host("home")
    sql = "SELECT (SELECT max(ts) FROM heartbeat)::text || '|' || (SELECT coalesce(max(id), 0) FROM drill_load)"
    when = now()
    done = _ssh(lab, "home", f"sudo systemctl kill -s KILL {LOAD_UNIT} embassy-heartbeat; "
                             f"sudo runuser -u postgres -- psql -X -A -t -d embassy_monitor -c {shlex.quote(sql)}", timeout=30)
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
    heartbeat, _, load = done.stdout.strip().partition("|")
    if done.returncode != 0 or not heartbeat:
        raise DrillFailed(f"home's last heartbeat could not be read before the incident: {done.stderr.strip()[-300:]}")
    return when, heartbeat, int(load or 0)


def detach_standbys(lab: LabState, dep: model.Deployment) -> None:
    """Tell every warm standby that home is gone, and wait (bounded) until its WAL receiver has closed:
    a standby would otherwise keep calling a dead primary (it keeps its data and its vault)."""
    for emb in dep.embassies:
        if emb.mode is model.Mode.WARM:
            _ssh(lab, lab.host(emb.name).name,
                 "sudo runuser -u postgres -- psql -X -q -c \"ALTER SYSTEM SET primary_conninfo = ''\" "
                 "-c 'SELECT pg_reload_conf()' && for i in $(seq 50); do sudo runuser -u postgres -- psql -X -Atq "
                 "-c 'SELECT count(*) FROM pg_stat_wal_receiver' | grep -qx 0 && break; sleep 0.1; done", timeout=30)


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


def measure(dep: model.Deployment, out: Outcome, incident_at: dt.datetime, incident_mono: float, home_heartbeat: str,
            home_load: int, lab: LabState | None) -> list[rpt.RegisterResult]:
    emb = dep.embassy(out.embassy)
    restored_hb = _ts(out.newest_heartbeat)
    home_hb = _ts(home_heartbeat)
    restored_load = None
    if lab is not None and out.ok and out.port:
        done = _ssh(lab, lab.host(out.embassy).name, f"sudo runuser -u postgres -- psql -X -A -t -p {out.port} "
                    "-d embassy_monitor -c 'SELECT coalesce(max(id), 0) FROM drill_load'", timeout=30)
        restored_load = int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip().isdigit() else None
    snapshots = {r["name"]: r.get("snapshot_time") for r in (out.manifest.body["registers"] if out.manifest else [])}
    results = []
    for reg in out.registers:
        spec = next(r for r in dep.registers if r.name == reg.name)
        rto = round(reg.done_at - incident_mono, 3) if reg.done_at else None
        rpo: float | None = None
        lost = None
        if reg.restored and reg.kind == model.RegisterKind.POSTGRES.value and home_hb and restored_hb:
            rpo = round(max(0.0, (home_hb - restored_hb).total_seconds()), 3)
            lost = max(0, home_load - restored_load) if restored_load is not None else None
        elif reg.restored and reg.kind == model.RegisterKind.FILES.value and snapshots.get(reg.name):
            taken = _ts(snapshots[reg.name])
            rpo = round(max(0.0, (incident_at - taken).total_seconds()), 3) if taken else None
        results.append(rpt.RegisterResult(
            name=reg.name, kind=reg.kind, priority=reg.priority, verified=reg.verified, restored=reg.restored,
            rto_seconds=rto, rpo_seconds=rpo, lost_transactions=lost,
            objective=rpt.Objective(rto_seconds=spec.rto_seconds, rpo_seconds=dep.rpo_bound(spec, emb)),
            digest=_digest_text(reg.digest), manifest_digest=_digest_text(reg.manifest_digest)))
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
        rpt.write_report(report, report_dir, report_keys())
        if watched is None or watch.snapshot().packets == watch.history[-2].packets:
            return report
    return report


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
            hardening = {r.name: r.lynis_after for r in harden_target(target, lambda m: say(f"  {m}"))}
    with timeline.step("deploy: home state, replication agents, embassy hosts"):
        deploy_lib.run(target, model.project_root(), size_mb=size_mb, say=lambda m: say(f"  {m}"))
    drill_kit = None
    if custody is not False:
        from embassy.custody import drill as custody_drill

        sheets = custody if isinstance(custody, Path) else Path(lab.dir) / "custody"
        with timeline.step(f"custody: seal each embassy's restore secrets in its vault, {custody_drill.OFFICIALS} "
                           f"officials' sheets, then withdraw every restore secret from the controller and {name}'s host"):
            drill_kit = custody_drill.prepare(dep, target, name, sheets, lambda m: say(f"  {m}"))
    with timeline.step(f"write load on home ({LOAD_RATE} tx/s) and replication rounds under it"):
        start_load(lab)
        replicate_rounds(lab, 2, lambda m: say(f"  {m}"))
        time.sleep(3)
    with timeline.step("incident: home stopped, its connections closed, its network cut, its disk wiped"):
        watch = Watch.start(lab)  # frames toward home counted in the kernel from the incident's first step
        incident_mono = time.monotonic()
        incident_at, home_heartbeat, home_load = incident(lab, dep, watch)
    say(f"  home's last heartbeat {home_heartbeat}, last load transaction {home_load}")
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
    registers = measure(dep, restored, incident_at, incident_mono, home_heartbeat, home_load, lab)
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
        verifications=checks, failures=failures, plan_hash=plan,
        where=where_lab(lab, size_mb, drill_kit is not None))
    report = write_watched(fields, watch, report_dir)  # the watch is read last, as the report is written
    watch.remove()
    if not keep_lab:
        say("lab down")
        lifecycle.down()
    return report


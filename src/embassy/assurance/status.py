"""`embassy status`: one screen per stack, from the vaults, each thing checked before it is shown.

Per embassy: its mode; its head round and age, from the manifest chain verified with home's key (as verify
walks it; the deep checks of backups are `embassy verify`'s); the age of the newest signed point per register
(the lag a restore from this vault would have now); the controller's last verify (its high-water mark); the
last restore test and the trend of the last ten, from the vault's signed, locked records (records.py); and an
alert line for anything failed, not established or overdue. Exit 0 all well, 1 anything alerted.
"""

from __future__ import annotations

import datetime as dt
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embassy import model
from embassy.assurance import records
from embassy.replication import freshness, manifest
from embassy.replication import verify as vault_verify
from embassy.targets import Target


@dataclass
class EmbassyStatus:
    name: str
    mode: str
    head: dict[str, Any] | None = None
    chain_problem: dict[str, str] | None = None
    lag: list[dict[str, Any]] = field(default_factory=list)
    last_verify: dict[str, Any] | None = None
    tests: records.History | None = None
    alerts: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        tests = self.tests.as_json() if self.tests else {}
        return {"name": self.name, "mode": self.mode, "lag": self.lag, "head": self.head,
                "chain_problem": self.chain_problem, "last_verify": self.last_verify,
                "last_restore_test": tests.get("last_restore_test"), "restore_tests": tests.get("restore_tests", []),
                "restore_tests_established": tests.get("established", False),
                "restore_tests_problem": tests.get("problem"), "overdue": tests.get("overdue", True),
                "restore_test_due": tests.get("next_due"),
                "alerts": self.alerts}


def _stored(items: list[vault_verify.Stored]) -> list[records.Stored]:
    return [records.Stored(o.key, o.data, o.lock_mode, o.retain_until, o.last_modified) for o in items]


def embassy_status(dep: model.Deployment, target: Target, emb: model.Embassy, public: Any, folder: Path,
                   now: dt.datetime) -> EmbassyStatus:
    out = EmbassyStatus(emb.name, emb.mode.value)
    chain_index: dict[int, manifest.Verified] | None = None
    try:
        chain, failure = vault_verify.walk(vault_verify.fetch_manifests(target, emb.name), public, stack=dep.stack,
                                           embassy=emb.name)
        if failure:
            out.chain_problem = {"object": f"vault:{emb.name}/{failure[0]}", "reason": failure[1]}
        elif chain:
            chain_index = {m.round: m for m in chain}
            head = chain[-1]
            age = (now - manifest.parse_time(head.body["time"])).total_seconds()
            out.head = {"round": head.round, "sha256": head.sha256, "time": head.body["time"], "age_seconds": round(age)}
            held = [r for r in dep.registers if any(e.name == emb.name for e in dep.holders(r))]
            out.lag = [{"register": r.name, "lag_seconds": round(age), "rpo_bound_seconds": dep.rpo_bound(r, emb),
                        "over": age > dep.rpo_bound(r, emb)} for r in held]
        else:
            out.chain_problem = {"object": f"vault:{emb.name}/{manifest.PREFIX}", "reason": "no signed manifest"}
        stored = _stored(vault_verify._reader(target, emb.name, {"prefix": records.RECORD_PREFIX}))
    except (vault_verify.VaultUnreachable, vault_verify.VaultGarbled) as exc:
        out.chain_problem = out.chain_problem or {"object": f"vault:{emb.name}", "reason": str(exc)}
        stored = []
        chain_index = None
    mark = freshness.read_mark(folder, emb.name)
    out.last_verify = mark.as_json() if mark else None
    out.tests = records.history(emb.name, stored, records.public_key(folder, emb.name), stack=dep.stack,
                                days=emb.retention_days, chain=chain_index, mark=records.read_mark(folder, emb.name),
                                schedule=dep.restore_tests.schedule, now=now)
    records.raise_mark(folder, emb.name, out.tests, now)
    out.alerts = alerts(out)
    return out


def alerts(s: EmbassyStatus) -> list[str]:
    """One line per thing that needs a person: failed, not established, overdue, stale."""
    found = []
    if s.chain_problem:
        found.append(f"{s.name}: manifest chain not verified: {s.chain_problem['object']}: {s.chain_problem['reason']}")
    for lag in s.lag:
        if lag["over"]:
            found.append(f"{s.name}: {lag['register']}: newest signed point {lag['lag_seconds']} s old, over its RPO "
                         f"bound of {lag['rpo_bound_seconds']} s")
    t = s.tests
    if t is not None:
        if t.problem:
            found.append(f"{s.name}: restore tests NOT ESTABLISHED: {t.problem['object']}: {t.problem['reason']}")
        elif t.last and not t.last.body["passed"]:
            failure = t.last.body.get("failure") or {}
            found.append(f"{s.name}: last restore test FAILED ({t.last.body['time']}): {failure.get('object')}: "
                         f"{failure.get('reason')}")
        if t.overdue and t.records:
            due = f"; the next was due at {t.next_due.isoformat()}" if t.next_due else "; the schedule has ended"
            found.append(f"{s.name}: restore test OVERDUE: the last one is of {t.records[-1].body['time']}{due}")
    return found


def status(dep: model.Deployment, target: Target, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.UTC)
    public = manifest.load_public_key(vault_verify.public_key_pem(dep, target))
    folder = vault_verify.controller_folder(dep, target)
    return document(dep.stack, [embassy_status(dep, target, e, public, folder, now) for e in dep.embassies], now)


def last_restore_tests(dep: model.Deployment, target: Target, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """What the drill's report records beside its own RTO: each embassy's last restore test, or why none counts.
    Never raises: a vault that cannot be read is that embassy's "not established"."""
    out = []
    for e in status_of_each(dep, target, now or dt.datetime.now(dt.UTC)):
        last, tests = e["last_restore_test"], e["restore_tests_problem"]
        out.append({"embassy": e["name"], "established": e["restore_tests_established"], "overdue": e["overdue"],
                    "time": last["time"] if last else None, "passed": last["passed"] if last else None,
                    "seconds": last["seconds"] if last else None,
                    "round": last["point"]["round"] if last else None,
                    "registers": [{"name": r["name"], "seconds": r["seconds"], "rto_seconds": r["rto_seconds"]}
                                  for r in (last or {}).get("registers", [])],
                    "problem": f"{tests['object']}: {tests['reason']}" if tests else None})
    return out


def status_of_each(dep: model.Deployment, target: Target, now: dt.datetime) -> list[dict[str, Any]]:
    try:
        return list(status(dep, target, now)["embassies"])
    except Exception as exc:  # the drill goes on: this is evidence beside it, not its verdict
        return [{"name": e.name, "last_restore_test": None, "restore_tests_established": False, "overdue": True,
                 "restore_tests_problem": {"object": "status", "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}}
                for e in dep.embassies]


def document(stack: str, found: list[EmbassyStatus], now: dt.datetime) -> dict[str, Any]:
    """`status --json`: {"stack", "time", "ok", "embassies": [...], "alerts": [...]}."""
    return {"stack": stack, "time": now.isoformat(), "ok": not any(s.alerts for s in found),
            "embassies": [s.as_json() for s in found], "alerts": [a for s in found for a in s.alerts]}


# --------------------------------------------------------------------------- rendering


def text(doc: dict[str, Any]) -> str:
    lines = [f"stack {doc['stack']} at {doc['time'][:19]}Z: {'all well' if doc['ok'] else 'ALERT'}"]
    for e in doc["embassies"]:
        head = e["head"] or {}
        lines.append(f"  {e['name']} ({e['mode']}): head round {head.get('round', '-')}, {head.get('age_seconds', '-')} s "
                     f"old; last verify: round {(e['last_verify'] or {}).get('round', 'never')}")
        last = e["last_restore_test"]
        if last:
            verdict = "passed" if last["passed"] else "FAILED"
            lines.append(f"    last restore test {last['time']}: {verdict}, round {last['point']['round']}, "
                         f"{last['seconds']:.1f} s; trend " + "".join("+" if t["passed"] else "x"
                                                                      for t in e["restore_tests"]))
            for r in last["registers"]:
                lines.append(f"      {r['name']}: {r['seconds']} s (RTO {r['rto_seconds']} s)")
        else:
            lines.append("    restore tests: not established")
    lines += [f"ALERT {a}" for a in doc["alerts"]]
    return "\n".join(lines) + "\n"


def trend_svg(e: dict[str, Any]) -> str:
    """The last ten restore tests of an embassy: seconds per test, failed ones in red, the tightest RTO as a line."""
    import matplotlib
    from matplotlib.figure import Figure

    tests = e["restore_tests"]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "embassy-status", "font.size": 9}):
        fig = Figure(figsize=(7, 2.4))
        ax = fig.add_subplot()
        xs = list(range(len(tests)))
        ax.bar(xs, [t["seconds"] for t in tests], color=["#2f6f9f" if t["passed"] else "#b42318" for t in tests])
        ax.set_xticks(xs, [t["time"][5:16].replace("T", " ") for t in tests], rotation=30, ha="right")
        rtos = [r["rto_seconds"] for t in tests for r in t["registers"] if r.get("rto_seconds")]
        if rtos:
            ax.axhline(min(rtos), color="#1a7f37", linestyle="--", label=f"tightest RTO {min(rtos)} s")
            ax.legend(loc="upper left")
        ax.set_ylabel("seconds")
        ax.set_title(f"{e['name']}: last {len(tests)} restore tests (red: failed)")
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def page(doc: dict[str, Any]) -> str:
    esc = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>embassy status: {esc(doc['stack'])}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}.alert{color:#b42318}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}</style></head><body>",
             f"<h1>embassy status: {esc(doc['stack'])}</h1><p id='verdict'>{esc(doc['time'][:19])}Z: "
             f"{'all well' if doc['ok'] else 'ALERT'}</p>"]
    if doc["alerts"]:
        parts.append("<ul id='alerts'>" + "".join(f"<li class='alert'>{esc(a)}</li>" for a in doc["alerts"]) + "</ul>")
    for e in doc["embassies"]:
        head = e["head"] or {}
        parts.append(f"<section id='embassy-{esc(e['name'])}'><h2>{esc(e['name'])} ({esc(e['mode'])})</h2>"
                     f"<p>head round {esc(str(head.get('round', '-')))}, {esc(str(head.get('age_seconds', '-')))} s old; "
                     f"last verify: round {esc(str((e['last_verify'] or {}).get('round', 'never')))}</p>")
        last = e["last_restore_test"]
        if last:
            parts.append(f"<p class='last'>last restore test {esc(last['time'])}: "
                         f"{'passed' if last['passed'] else 'FAILED'}, point round {esc(str(last['point']['round']))}, "
                         f"{last['seconds']:.1f} s</p><table><tr><th>register</th><th>seconds</th><th>RTO</th></tr>"
                         + "".join(f"<tr><td>{esc(r['name'])}</td><td>{r['seconds']}</td><td>{r['rto_seconds']}</td>"
                                   "</tr>" for r in last["registers"]) + "</table>")
        else:
            parts.append(f"<p class='last alert'>restore tests not established: "
                         f"{esc(str((e['restore_tests_problem'] or {}).get('reason', '')))}</p>")
        if e["restore_tests"]:
            parts.append(f"<figure class='trend'>{trend_svg(e)}</figure>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(doc: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "status.html"
    path.write_text(page(doc))
    return path

"""Move each warm embassy's held standby forward to the newest signed point, after verifying it (controller side).

Run after a replication round by `embassy replicate --once` and by the drill's rounds. For each warm
embassy: its vault's manifest chain is read and verified (signatures, chain, stack, embassy) with home's
public key; the head's earliest postgres digest LSN becomes the standby's hold (embassy.replication.standby),
only forward, and only when the standby has not replayed past it; then the standby restarts to replay to
it. Rounds that home's own timer runs are not followed until the next call: the hold then lags, and a
restore replays more WAL to reach the head's point (still proven: the hold is only an optimisation of
replay time, never what a restore trusts).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embassy import model
from embassy.errors import RestoreFailed
from embassy.replication import manifest
from embassy.replication import verify as vault_verify
from embassy.replication.dataplane import host_postgres
from embassy.replication.standby import held_lsn, hold_conf, hold_file, lsn_int, signed_points
from embassy.targets import Host, Target

Say = Callable[[str], None]


@dataclass
class Moved:
    embassy: str
    round: int | None = None
    lsn: str | None = None
    moved: bool = False
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"embassy": self.embassy, "round": self.round, "lsn": self.lsn, "moved": self.moved, "reason": self.reason}


def _sh(target: Target, host: Host, command: str, timeout: float = 120) -> tuple[int, str]:
    done = target.run_on(host, command, timeout=timeout)
    return done.returncode, (done.stdout if done.returncode == 0 else done.stderr).strip()


def advance(dep: model.Deployment, target: Target, embassy: str) -> Moved:
    """Verify `embassy`'s chain and move its standby's hold to the head's earliest signed point (never back)."""
    out = Moved(embassy)
    public = manifest.load_public_key(vault_verify.public_key_pem(dep, target))
    try:
        objects = vault_verify.fetch_manifests(target, embassy)
    except vault_verify.VaultUnreachable as exc:
        out.reason = f"vault unreachable: {exc.reason}"
        return out
    chain, failure = vault_verify.walk(objects, public, stack=dep.stack, embassy=embassy)
    if failure or not chain:
        out.reason = f"chain not verified: {failure[0] + ': ' + failure[1] if failure else 'no manifest'}"
        return out
    head = chain[-1]
    points = signed_points(head.body)
    if not points:
        out.reason = f"{head.key} names no postgres digest LSN"
        return out
    out.round, out.lsn = head.round, min(points.values(), key=lsn_int)
    host = target.embassy_hosts(embassy)[0]
    try:
        pg = host_postgres(target, host)
    except RestoreFailed as exc:
        out.reason = exc.message
        return out
    code, text = _sh(target, host, f"sudo cat {hold_file(pg)} 2>/dev/null; echo '--'; sudo runuser -u postgres -- psql -X -A "
                                   "-t -c 'SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()'")
    conf, _, state = text.partition("--")
    fields = state.strip().split("|")
    if code != 0 or len(fields) != 2 or fields[0] != "t" or not fields[1]:
        out.reason = f"no standby in recovery on {host.name}: {text[-200:]}"
        return out
    current = held_lsn(conf)
    if current and lsn_int(current) >= lsn_int(out.lsn):
        out.reason = f"already held at {current}"
        return out
    if lsn_int(fields[1]) > lsn_int(out.lsn):
        out.reason = f"replayed {fields[1]}, past {out.lsn}: not held there (the next round's point is later)"
        return out
    text = hold_conf(out.lsn, f"Round {head.round} ({head.key}, sha256 {head.sha256[:16]}), verified by the controller.")
    code, err = _sh(target, host, f"printf %s {shlex.quote(text)} | sudo install -o postgres -g postgres -m 600 "
                                  f"/dev/stdin {hold_file(pg)} && sudo systemctl restart {pg.service}", timeout=300)
    out.moved, out.reason = code == 0, "" if code == 0 else f"restart failed: {err[-200:]}"
    return out


def advance_all(dep: model.Deployment, target: Target, say: Say = lambda _m: None) -> list[Moved]:
    """Every warm embassy's hold moved (`advance`), the embassies at once: each has its own vault and host, and
    each move waits on them (the chain read, SSH, a standby restart) for seconds. Results in the stack's order."""
    from concurrent.futures import ThreadPoolExecutor

    warm = [emb.name for emb in dep.embassies if emb.mode is model.Mode.WARM and target.embassy_hosts(emb.name)]
    with ThreadPoolExecutor(max_workers=max(1, len(warm))) as pool:
        done = list(pool.map(lambda name: advance(dep, target, name), warm))
    for moved in done:
        say(f"{moved.embassy}: standby " + (f"held at {moved.lsn} (round {moved.round})" if moved.moved
                                            else f"hold unchanged: {moved.reason}"))
    return done

"""Freshness of a vault's chain, anchored on the verifier's side (a host nation chooses what its vault serves).

A validly signed chain can still be old: a host rolls its vault back to an earlier chain, or freezes it.
Nothing in that vault can prove otherwise, so the proof comes from outside it:
- the high-water mark: the newest round and head sha256 this controller ever verified for each embassy
  (a 0600 file in the secrets folder); a head older than it is stale, another head at its round (or a
  chain without it) is a second history;
- the custody bundle's round at sealing, where a bundle is at hand: sealed after home signed that round;
- any manifest of the stack that verifies with home's key in any reachable vault (another embassy's, of a
  chain that fails later too): home had signed that round by then.
The first two are strict (any newer round makes the head stale); another embassy's round is compared by
time, within the registers' objective (a vault that missed a round while unreachable is lag, not rollback).
When none of them exists, freshness is "not established": never "intact" unless the operator accepts it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets as _random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embassy.errors import UserError
from embassy.replication import manifest
from embassy.replication.privatefile import create_private

MARK_PREFIX = "highwater-"
MARK_MAX_BYTES = 4096
HIGH_WATER = "high-water mark"
BUNDLE = "custody bundle"


@dataclass(frozen=True)
class Anchor:
    """A round the state is known to have reached, and where that is known from."""

    source: str  # HIGH_WATER, BUNDLE, or vault:<embassy>
    round: int
    sha256: str | None = None
    time: str | None = None
    key: str | None = None
    strict: bool = True  # any round above the head is stale; else only beyond the objective (by time)

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "round": self.round, "sha256": self.sha256, "time": self.time,
                "object": self.key, "strict": self.strict}


@dataclass
class Freshness:
    """What verify's JSON, restore's outcome and the drill report record as `"freshness"`."""

    anchors: list[Anchor] = field(default_factory=list)
    not_comparable: list[dict[str, str]] = field(default_factory=list)  # {"embassy", "reason"}
    accepted_unanchored: bool = False
    stale: dict[str, Any] | None = None  # {"object", "reason"} when the head is older than an anchor

    @property
    def established(self) -> bool:
        return bool(self.anchors)

    def as_json(self) -> dict[str, Any]:
        return {"established": self.established, "accepted_unanchored": self.accepted_unanchored,
                "newest_known_round": max((a.round for a in self.anchors), default=None),
                "anchors": [a.as_json() for a in self.anchors], "not_comparable": self.not_comparable,
                "stale": self.stale}


# --------------------------------------------------------------------------- the high-water mark


def mark_path(folder: Path, embassy: str) -> Path:
    return folder / f"{MARK_PREFIX}{embassy}.json"


def read_mark(folder: Path, embassy: str) -> Anchor | None:
    """The embassy's high-water mark, or None if this controller never verified it. A damaged file is bad input."""
    path = mark_path(folder, embassy)
    try:
        if path.stat().st_mode & 0o077:
            raise UserError(f"high-water mark {path} is readable or writable by others",
                            f"run `chmod 600 {path}`, and check that nobody edited it")
        with path.open("rb") as fh:
            data = fh.read(MARK_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    try:
        doc = manifest.parse_json(data, max_bytes=MARK_MAX_BYTES, max_depth=2)
        if doc.get("embassy") != embassy or not isinstance(doc.get("round"), int) or isinstance(doc["round"], bool):
            raise ValueError("no embassy or round")
        return Anchor(HIGH_WATER, doc["round"], str(doc.get("sha256") or "") or None, doc.get("time"), doc.get("key"))
    except (ValueError, AttributeError) as exc:
        raise UserError(f"high-water mark {path} is damaged ({exc})",
                        "restore it from a backup of the controller; deleting it leaves freshness unanchored "
                        "until another embassy or a custody bundle anchors it") from None


def raise_mark(folder: Path, embassy: str, head: manifest.Verified) -> bool:
    """Record `head` as the embassy's high-water mark if it is newer than the mark; True if written.

    Written as a new 0600 file (the private-file helper), then renamed over the old one: a crash leaves
    either mark whole, never a torn one."""
    current = read_mark(folder, embassy)
    if current is not None and current.round >= head.round:
        return False
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    doc = {"embassy": embassy, "round": head.round, "sha256": head.sha256, "key": head.key,
           "time": head.body.get("time"), "verified_at": dt.datetime.now(dt.UTC).isoformat()}
    temp = folder / f".{MARK_PREFIX}{embassy}.{_random.token_hex(6)}.tmp"
    if not create_private(temp, (json.dumps(doc, sort_keys=True) + "\n").encode()):
        raise UserError(f"cannot write {temp}: it exists", f"remove {temp}")
    os.replace(temp, mark_path(folder, embassy))
    return True


# --------------------------------------------------------------------------- anchors and the verdict


def bundle_round(bundle: Any) -> int | None:
    """The newest round home had signed when the custody bundle was sealed (authenticated with the bundle);
    None for a bundle that does not carry it. Read in one place: the bundle's format is custody's."""
    value = getattr(bundle, "sealed_round", None)
    if value is None and isinstance(getattr(bundle, "outputs", None), dict):
        value = bundle.outputs.get("sealed_round")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def evidence(embassy: str, newest: manifest.Verified) -> Anchor:
    """Another vault's newest manifest signed by home: compared by time, within the objective."""
    return Anchor(f"vault:{embassy}", newest.round, newest.sha256, str(newest.body.get("time")), newest.key, strict=False)


def second_history(chain: list[manifest.Verified], mark: Anchor) -> str | None:
    """The reason the chain is not the history the mark was taken of, or None."""
    at = next((m for m in chain if m.round == mark.round), None)
    if at is None and chain and chain[-1].round > mark.round:
        return (f"round {mark.round}, verified before as {str(mark.sha256)[:16]}…, is not in the chain: "
                "a second history (a chain restarted or replaced)")
    if at is not None and mark.sha256 and at.sha256 != mark.sha256:
        return (f"round {mark.round} is {at.sha256[:16]}… here, verified before as {mark.sha256[:16]}…: "
                "a second history (a chain restarted or replaced)")
    return None


def judge(head: manifest.Verified, fresh: Freshness, bound_seconds: int) -> str | None:
    """The reason the head is stale against an anchor, or None. bound_seconds: the tightest objective."""
    head_time = manifest.parse_time(head.body["time"])
    for a in sorted(fresh.anchors, key=lambda a: -a.round):
        if a.round <= head.round:
            continue
        if a.strict:
            return (f"stale: head is round {head.round}, older than round {a.round} known from the {a.source}"
                    f"{' (' + str(a.key) + ')' if a.key else ''} (rolled back or frozen)")
        behind = (manifest.parse_time(a.time) - head_time).total_seconds() if a.time else float("inf")
        if behind > bound_seconds:
            return (f"stale: head is round {head.round}, {behind:.0f} s behind {a.source.removeprefix('vault:')}'s "
                    f"round {a.round}, more than the objective of {bound_seconds} s (rolled back or frozen)")
    return None

"""Home's round state (state.json): the round counter and, per embassy, the head its next manifest links to.

A lost or unreadable state must never restart the chain: a round 1 written again would stand beside the
old one, two validly signed histories, and the host would choose which to serve. So the state is read
strictly (unreadable is never "round 0"), and an embassy whose head the state does not hold gets it
from the vaults: the newest manifest there that verifies with home's own key, for that stack and embassy.
A new chain (no previous manifest) is started only when no vault can hold one: every vault answered and
none holds a manifest of this embassy's chain; else only when the operator says so (`--new-chain`),
which the signed manifests of that round record.

Runs on home (stdlib and `manifest`); the decision is pure, so that it is tested with hostile vaults.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import manifest

MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KiB: a larger object under manifests/ is not one
SHA256 = re.compile(r"[0-9a-f]{64}")


class StateUnreadable(Exception):
    """state.json exists but cannot be trusted as a round state: the reason says why."""


class RecoveryRefused(Exception):
    """The round state is lost and the vaults cannot say where the chain stands: no manifest is written."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason, self.hint = reason, hint


# --------------------------------------------------------------------------- reading state.json strictly


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_head(name: str, head: Any) -> None:
    if not isinstance(head, dict):
        raise StateUnreadable(f"embassies.{name} is not an object")
    if not (isinstance(head.get("sha256"), str) and SHA256.fullmatch(head["sha256"])):
        raise StateUnreadable(f"embassies.{name}.sha256 is not a sha256")
    if not _int(head.get("round")) or head.get("key") != manifest.object_key(head["round"]):
        raise StateUnreadable(f"embassies.{name}: round and key do not match")
    if not isinstance(head.get("files", {}), dict):
        raise StateUnreadable(f"embassies.{name}.files is not an object")


def load(path: Path) -> dict[str, Any] | None:
    """The round state, None when there is none; StateUnreadable when it is there but not a round state."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateUnreadable(f"cannot read it: {exc.strerror or exc}") from None
    try:
        state = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise StateUnreadable(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(state, dict) or not _int(state.get("round")) or not isinstance(state.get("embassies"), dict):
        raise StateUnreadable("not a round state (expected a round number and an object of embassies)")
    for name, head in state["embassies"].items():
        _check_head(str(name), head)
        if head["round"] > state["round"]:
            raise StateUnreadable(f"embassies.{name} is at round {head['round']}, after the state's {state['round']}")
    return state


# --------------------------------------------------------------------------- what the vaults say


@dataclass
class VaultView:
    """One embassy's vault as home read it: its objects under manifests/, or why it could not be read."""

    embassy: str
    objects: list[tuple[str, bytes]] | None  # None: unreachable
    error: str = ""


@dataclass
class Head:
    """The newest manifest of one embassy's chain found in its vault, and what else was seen there."""

    embassy: str
    verified: manifest.Verified | None
    junk: list[tuple[str, str]] = field(default_factory=list)  # (object, reason): not a manifest of this chain
    broken: tuple[str, str] | None = None  # the chain's first failure, if any (a note: the head still counts)


def newest_head(view: VaultView, public: Any, *, stack: str) -> Head:
    """The newest manifest in the vault that verifies by itself (home's key, this stack and embassy).

    Not the end of the verified prefix: one damaged manifest in the middle would otherwise hide every later
    one, and the next round would reuse their round numbers. Any object that is not such a manifest (too
    large, not JSON, deeply nested, another key, another embassy) is junk, named, and never raises.
    """
    head = Head(view.embassy, None)
    for key, data in sorted(view.objects or []):
        if len(data) > MAX_MANIFEST_BYTES:
            head.junk.append((key, f"{len(data)} bytes, more than a manifest's {MAX_MANIFEST_BYTES}"))
            continue
        try:
            m = manifest.verify(key, data, public)
        except manifest.ManifestError as exc:
            head.junk.append((key, str(exc)[:300]))
            continue
        except (RecursionError, ValueError, TypeError, KeyError) as exc:  # hostile shapes the parser did not foresee
            head.junk.append((key, f"not a manifest ({type(exc).__name__})"))
            continue
        if m.body["stack"] != stack or m.body["embassy"] != view.embassy:
            head.junk.append((key, f"a manifest of stack '{m.body['stack']}', embassy '{m.body['embassy']}'"))
            continue
        if head.verified is None or m.round > head.verified.round:
            head.verified = m
    if view.objects and not head.junk:
        try:
            head.broken = manifest.verify_chain(view.objects, public, stack=stack, embassy=view.embassy)[1]
        except (RecursionError, ValueError, TypeError, KeyError):
            head.broken = None  # every object verified alone; a shape verify_chain trips on is not ours to judge here
    return head


def head_entry(m: manifest.Verified) -> dict[str, Any]:
    """The state's entry for an embassy whose head is `m`: what its next manifest links to and carries on."""
    files = {}
    for reg in m.body.get("registers") or []:
        if isinstance(reg, dict) and reg.get("kind") == "files" and reg.get("snapshot_id"):
            # A snapshot carried from this head keeps the digest and time it was signed with.
            files[str(reg["name"])] = {"snapshot_id": reg["snapshot_id"], "time": reg.get("snapshot_time"),
                                       "repository": reg.get("repository"), "digest": reg.get("digest")}
    return {"sha256": m.sha256, "round": m.round, "key": m.key, "time": m.body.get("time"), "files": files,
            "recovered": True}


@dataclass
class Recovery:
    """The state to run the round with, and what the recovery found (for the round's report)."""

    state: dict[str, Any]
    unknown: list[str]  # embassies whose head is unknown: no manifest for them this round
    notes: dict[str, list[str]]
    new_chain: bool = False  # the operator asked for one (recorded in the signed manifests)
    recovered: bool = False


def recover(state: dict[str, Any] | None, why: str, views: list[VaultView], public: Any, *, stack: str,
            new_chain: bool = False) -> Recovery:
    """Decide where the chain stands for the embassies `state` does not hold (all of them when it is lost).

    `views`: the vaults of those embassies as home read them. The round number goes past every verified
    round seen, in the state or in any vault, so that no round key is ever written twice.
    """
    base: dict[str, Any] = state if state is not None else {"round": 0, "embassies": {}}
    out: dict[str, Any] = {"round": int(base["round"]), "embassies": dict(base["embassies"])}
    notes: dict[str, list[str]] = {v.embassy: [] for v in views}
    unknown: list[str] = []
    heads = {}
    for view in views:
        if view.objects is None:
            unknown.append(view.embassy)
            notes[view.embassy].append(f"chain head unknown: vault unreachable ({view.error[:200]})")
            continue
        head = newest_head(view, public, stack=stack)
        heads[view.embassy] = head
        for key, reason in head.junk[:10]:
            notes[view.embassy].append(f"{key} is not a manifest of this chain: {reason}")
        if head.broken:
            notes[view.embassy].append(f"its chain does not verify at {head.broken[0]}: {head.broken[1][:200]}")
        if head.verified is not None:
            out["embassies"][view.embassy] = head_entry(head.verified)
            out["round"] = max(out["round"], head.verified.round)
        elif head.junk:
            # Objects under manifests/ and none of them ours: damaged or replaced; a new chain there needs the operator.
            unknown.append(view.embassy)
            notes[view.embassy].append("chain head unknown: no manifest there verifies with home's key")
    newest = max((h.verified for h in heads.values() if h.verified), key=lambda m: m.round, default=None)
    if newest is not None:
        for name, head in heads.items():
            if head.verified is not None and head.verified.round < newest.round:
                notes[name].append(f"head round {head.verified.round} is behind round {newest.round} of "
                                   f"{newest.body['embassy']} (missed rounds, or rolled back)")
    if state is None and views and all(v.objects is None for v in views) and not new_chain:
        raise RecoveryRefused(f"round state {why} and no vault answers: the chain's head cannot be recovered",
                              "bring a vault back and run the round again; to start a new chain anyway, run "
                              "`python3 -m replication.round run --new-chain` on home (its manifests record it)")
    if state is None and newest is None and unknown and not new_chain:
        raise RecoveryRefused(f"round state {why}, no answering vault holds a chain and "
                              f"{', '.join(sorted(unknown))} cannot say: a new chain could stand beside one",
                              "bring those vaults back and run the round again, or run "
                              "`python3 -m replication.round run --new-chain` on home (its manifests record it)")
    if new_chain:
        for name in unknown:
            notes[name].append("a new chain starts here (--new-chain)")
        unknown = []
    return Recovery(out, unknown, notes, new_chain=new_chain, recovered=bool(views))


def missing_heads(state: dict[str, Any] | None, embassies: list[str]) -> list[str]:
    """The embassies whose head the state does not hold: their vaults are read before the round."""
    held = (state or {}).get("embassies", {})
    return [e for e in embassies if e not in held]

"""The custody kit: issue a bundle version (init, rotate) and open it again from K officials' shares.

Issue: gather each embassy's restore secrets, draw a fresh 256-bit key, seal one bundle per embassy,
write the officials' sheets, then store each bundle in its embassy's own vault (Object Lock
COMPLIANCE). The sheets are written first: a stored bundle whose key nobody holds could never open.
Open: read the embassy's bundles from its own vault with the read-only identity, check every share
against them (mistyped, another version, another stack: each named), combine, unseal.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from embassy import model
from embassy.custody import seal, shares, sheets
from embassy.custody.bundle import Bundle, gather
from embassy.custody.vaultio import PREFIX, object_key
from embassy.errors import ObjectMissing, SharesRefused, UserError, VaultRefusedWrite, VaultUnreachable
from embassy.lab.state import LabState

Say = Callable[[str], None]


class Store(Protocol):
    """Where an embassy's sealed bundles live: its vault (LabVaults), or a dict in unit tests."""

    def put(self, embassy: str, key: str, envelope: dict[str, Any]) -> dict[str, Any]: ...

    def envelopes(self, embassy: str, stack: str) -> list[tuple[str, dict[str, Any]]]: ...


class LabVaults:
    """The lab's vaults over S3, from the controller namespace: agent identity writes, reader identity reads."""

    def __init__(self, lab: LabState, dep: model.Deployment) -> None:
        self.lab, self.dep = lab, dep

    def _run(self, action: str, spec: dict[str, Any], stdin: bytes = b"") -> dict[str, Any]:
        argv = self.lab.in_controller([sys.executable, "-m", "embassy.custody.vaultio", action, json.dumps(spec)])
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=90, check=False)
            got: dict[str, Any] = json.loads(done.stdout)
        except (subprocess.TimeoutExpired, ValueError):
            got = {"ok": False, "error": "no answer in 90 s"}
        return got

    def put(self, embassy: str, key: str, envelope: dict[str, Any]) -> dict[str, Any]:
        v = self.lab.vault(embassy)
        got = self._run("put", {"endpoint": v.endpoint, "ca_file": v.ca_file, "credentials": v.agent_credentials,
                                "bucket": v.bucket, "key": key},
                        json.dumps(envelope, indent=1, sort_keys=True).encode())
        if not got.get("ok"):
            raise VaultRefusedWrite(f"vault:{embassy}/{key}: {str(got.get('error'))[:300]}")
        return got

    def envelopes(self, embassy: str, stack: str) -> list[tuple[str, dict[str, Any]]]:
        v = self.lab.vault(embassy)
        got = self._run("list", {"endpoint": v.endpoint, "ca_file": v.ca_file, "credentials": v.reader_credentials,
                                 "bucket": v.bucket, "prefix": f"{PREFIX}{stack}/"})
        if not got.get("ok"):
            raise VaultUnreachable(f"vault:{embassy}: {str(got.get('error'))[:300]}")
        out = []
        for obj in got["objects"]:
            try:
                out.append((obj["key"], json.loads(obj["data"])))
            except ValueError:
                out.append((obj["key"], {}))  # header_of names it as not a bundle
        return out


@dataclass
class Issued:
    version: int
    threshold: int
    officials: int
    identifier: int
    sheets: list[Path]
    stored: list[dict[str, Any]]  # per embassy: key, lock mode, retain until


def current_version(store: Store, dep: model.Deployment) -> tuple[int, set[int]]:
    """The newest bundle version in any embassy's vault (0: none), and every identifier already used."""
    newest, identifiers = 0, set()
    for emb in dep.embassies:
        for key, env in store.envelopes(emb.name, dep.stack):
            head = seal.header_of(env, f"vault:{emb.name}/{key}")
            newest = max(newest, int(head["version"]))
            identifiers.add(int(head["identifier"]))
    return newest, identifiers


def issue(dep: model.Deployment, lab: LabState, store: Store, secrets_folder: Path, out: Path, *, officials: int,
          threshold: int, rotate: bool | None, now: dt.datetime | None = None, say: Say = lambda _m: None) -> Issued:
    """rotate: False for init (refused if a kit exists), True for rotate (refused if none), None for either."""
    shares.check_counts(officials, threshold)
    now = now or dt.datetime.now(dt.UTC)
    newest, taken = current_version(store, dep)
    if rotate is None:
        rotate = newest > 0
    if newest and not rotate:
        raise UserError(f"stack '{dep.stack}' already has a custody kit (bundle version {newest} in the vaults)",
                        f"run `embassy custody rotate --stack {dep.stack}` to issue version {newest + 1} and new sheets")
    if rotate and not newest:
        raise UserError(f"stack '{dep.stack}' has no custody kit to rotate", f"run `embassy custody init --stack {dep.stack}`")
    version = newest + 1
    say(f"gathering the restore secrets of {len(dep.embassies)} embassies (bundle version {version})")
    bundles = gather(dep, lab, secrets_folder, version, now)
    key = os.urandom(shares.KEY_BYTES)
    words = shares.split(key, officials, threshold, frozenset(taken))
    identifier = shares.identifier_of(words[0])
    envelopes = {name: seal.seal(b, key, identifier=identifier, threshold=threshold, officials=officials)
                 for name, b in bundles.items()}
    del key  # from here on only the officials' shares hold it
    say(f"writing {officials} sheets to {out}")
    written = sheets.write([sheets.Sheet(i + 1, officials, threshold, dep.stack, version, list(bundles), now.date(), w)
                            for i, w in enumerate(words)], out)
    stored = []
    for name, env in envelopes.items():
        say(f"storing bundle version {version} in the vault of {name} (Object Lock COMPLIANCE)")
        got = store.put(name, object_key(dep.stack, version), env)
        stored.append({"embassy": name, "key": got.get("key"), "lock_mode": got.get("lock_mode"),
                       "retain_until": got.get("retain_until")})
    return Issued(version, threshold, officials, identifier, written, stored)


def read_shares(sources: list[str], stdin_text: Callable[[], str]) -> list[shares.ShareText]:
    """Each --shares argument: a file (a sheet's .txt, or the words), or `-`: one share per paragraph of stdin."""
    texts: list[shares.ShareText] = []
    for source in sources:
        if source == "-":
            pending = ""  # a pasted sheet's header (only `#` lines) belongs to the words after it
            for paragraph in stdin_text().replace("\r", "").split("\n\n"):
                if not shares.parse_text(paragraph, "-").words:
                    pending += paragraph + "\n"
                    continue
                texts.append(shares.parse_text(pending + paragraph, f"stdin share {len(texts) + 1}"))
                pending = ""
            continue
        path = Path(source)
        try:
            texts.append(shares.parse_text(path.read_text(), str(path)))
        except OSError as exc:
            raise SharesRefused(f"cannot read share file {path}: {exc.strerror}",
                                "give the path of an official's sheet (official-<i>.txt), or - to type it") from None
    return texts


def check_shares(texts: list[shares.ShareText], stack: str) -> list[shares.ParsedShare]:
    """Each share on its own, before any vault is read: words, checksum, and the stack its sheet names."""
    if not texts:
        raise SharesRefused("no share given", "give --shares FILE... (the officials' sheets) or --shares -")
    parsed = [shares.parse(t) for t in texts]
    for p in parsed:
        if p.text.stack and p.text.stack != stack:
            raise SharesRefused(f"{p.text.source}: a share of stack '{p.text.stack}', not '{stack}'",
                                f"use the sheets of stack {stack}")
    return parsed


def open_bundle(dep: model.Deployment, store: Store, embassy: str, texts: list[shares.ShareText],
                say: Say = lambda _m: None) -> Bundle:
    """The embassy's newest bundle, opened with the shares; SharesRefused names the share that failed and why."""
    parsed = check_shares(texts, dep.stack)
    say(f"reading the custody bundles of {embassy} from its own vault (read-only identity)")
    found = store.envelopes(embassy, dep.stack)
    headers = {key: seal.header_of(env, f"vault:{embassy}/{key}") for key, env in found}
    if not headers:
        raise ObjectMissing(f"vault:{embassy}/{PREFIX}{dep.stack}/: no custody bundle",
                            f"run `embassy custody init --stack {dep.stack}` while home exists; restore at another "
                            "embassy meanwhile")
    newest_key = max(headers, key=lambda k: int(headers[k]["version"]))
    newest = headers[newest_key]
    versions = {int(h["identifier"]): int(h["version"]) for h in headers.values()}
    for p in parsed:
        if p.identifier == int(newest["identifier"]):
            continue
        if p.identifier in versions:
            raise SharesRefused(f"{p.text.source}: a share of the earlier bundle version {versions[p.identifier]}; the vault's "
                                f"bundle is version {newest['version']}",
                                f"use the sheets that say 'bundle version: {newest['version']}'")
        raise SharesRefused(f"{p.text.source}: a share of no bundle of stack '{dep.stack}' at {embassy} "
                            f"(identifier {p.identifier}): another stack's or another kit's",
                            f"use the sheets of stack {dep.stack}, bundle version {newest['version']}")
    key = shares.combine(parsed, int(newest["threshold"]))
    env = dict(found)[newest_key]
    say(f"opening {newest_key} (version {newest['version']})")
    return seal.unseal(env, key, f"vault:{embassy}/{newest_key}")

"""The custody kit: issue a bundle version (init, rotate) and open it again from K officials' shares.

Issue: gather each embassy's restore secrets, draw a fresh 256-bit key, seal one bundle per embassy
(each envelope signed by home's manifest key), write the officials' sheets, then store each bundle in
its embassy's own vault under Object Lock COMPLIANCE (read back and checked). The sheets are written
first: a stored bundle whose key nobody holds could never open. Which version comes next, and which
identifiers are taken, is read only from headers whose signature verifies: a header the vault's host
forged is named and ignored.
Open: the shares decide (their identifier, their threshold), not the vault's headers; every candidate
is opened with the key derived for the embassy being restored, and its identity compared before any
of it is used; a newer version proven by home's signature makes older shares refused, by name.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature

from embassy import model
from embassy.custody import seal, shares, sheets
from embassy.custody.bundle import Bundle, gather
from embassy.custody.vaultio import MAX_OBJECTS, PREFIX, object_key, version_of
from embassy.errors import (
    BundleInvalid,
    HostUnknown,
    ObjectMissing,
    SharesRefused,
    SignatureInvalid,
    UserError,
    VaultRefusedWrite,
    VaultUnreachable,
)
from embassy.replication import verify as vault_verify
from embassy.replication.manifest import load_public_key
from embassy.targets import Target

Say = Callable[[str], None]
Stored = dict[str, Any] | str  # a parsed envelope, or why the stored bytes are not one
T = TypeVar("T")
R = TypeVar("R")
HOME_KEY_FILE = "/etc/embassy/manifest.key"  # replication.deploy_home.KEY_FILE: home's private key never leaves home


class Store(Protocol):
    """Where an embassy's sealed bundles live: its vault (TargetVaults), or a dict in unit tests."""

    def put(self, embassy: str, key: str, envelope: dict[str, Any]) -> dict[str, Any]: ...

    def envelopes(self, embassy: str, stack: str) -> list[tuple[str, Stored]]: ...


@dataclass(frozen=True)
class BundleLock:
    """A stored bundle's Object Lock, as its vault reports it."""

    key: str
    mode: str | None
    retain_until: dt.datetime | None
    written: dt.datetime | None

    def problem(self, retention_days: int) -> str | None:
        """Why this lock is not enough (None: COMPLIANCE until at least the write time plus the retention)."""
        if self.mode != "COMPLIANCE":
            return f"lock mode {self.mode or 'none'}, not COMPLIANCE"
        if self.retain_until is None or self.written is None:
            return "no retain-until date or write time"
        wanted = self.written + dt.timedelta(days=retention_days - 1)  # retention is counted in whole days: a day's slack
        if self.retain_until < wanted:
            return f"retained until {self.retain_until.isoformat()}, less than {retention_days} days after its write"
        return None


def _time(value: Any) -> dt.datetime | None:
    try:
        got = dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    return got.replace(tzinfo=dt.UTC) if got and got.tzinfo is None else got


def lock_of(key: str, reported: dict[str, Any]) -> BundleLock:
    return BundleLock(key, reported.get("lock_mode") or None, _time(reported.get("retain_until")),
                      _time(reported.get("last_modified")))


class TargetVaults:
    """The embassies' vaults over S3 as a target reaches them (`target.vault(embassy)`, run where the vault is
    reachable): the custody identity writes (the agent's where the target names no custody identity), the
    read-only identity reads."""

    def __init__(self, target: Target, dep: model.Deployment) -> None:
        self.target, self.dep = target, dep

    def _run(self, embassy: str, action: str, spec: dict[str, Any], stdin: bytes = b"") -> dict[str, Any]:
        vault = self.target.vault(embassy)
        argv = vault.client_argv([sys.executable, "-m", "embassy.custody.vaultio", action, json.dumps(spec)])
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=90, check=False)
            got: dict[str, Any] = json.loads(done.stdout)
        except (subprocess.TimeoutExpired, ValueError):
            got = {"ok": False, "error": "no answer in 90 s"}
        return got

    def _spec(self, embassy: str, identity: str) -> dict[str, Any]:
        vault = self.target.vault(embassy)
        if identity == "custody" and "custody" not in vault.identities:
            identity = "agent"  # the lab's vaults: the agents' identity writes the bundles too
        spec: dict[str, Any] = vault.client_spec(identity)  # names where the credentials are, never holds them
        return spec

    def put(self, embassy: str, key: str, envelope: dict[str, Any]) -> dict[str, Any]:
        got = self._run(embassy, "put", {**self._spec(embassy, "custody"), "key": key},
                        json.dumps(envelope, indent=1, sort_keys=True).encode())
        if not got.get("ok"):
            raise VaultRefusedWrite(f"vault:{embassy}/{key}: {str(got.get('error'))[:300]}")
        return got

    def _listed(self, embassy: str, stack: str, action: str) -> list[dict[str, Any]]:
        got = self._run(embassy, action, {**self._spec(embassy, "reader"), "prefix": f"{PREFIX}{stack}/",
                                          "stack": stack})
        if not got.get("ok"):
            raise VaultUnreachable(f"vault:{embassy}: {str(got.get('error'))[:300]}")
        if got.get("truncated"):
            raise BundleInvalid(f"vault:{embassy}/{PREFIX}{stack}/: more than {MAX_OBJECTS} objects (a kit holds one per "
                                "version): not read further", "the vault's host planted objects: restore at another "
                                "embassy and investigate this vault")
        objects: list[dict[str, Any]] = got["objects"]
        return objects

    def envelopes(self, embassy: str, stack: str) -> list[tuple[str, Stored]]:
        out: list[tuple[str, Stored]] = []
        for obj in self._listed(embassy, stack, "list"):
            if "data" not in obj:
                out.append((obj["key"], f"not read ({obj.get('size')} bytes; an envelope is at most "
                                        f"{seal.MAX_ENVELOPE_BYTES}, at a bundle's key)"))
                continue
            try:
                data = base64.b64decode(obj["data"], validate=True)
            except (binascii.Error, ValueError, TypeError):
                out.append((obj["key"], "unreadable"))
                continue
            out.append((obj["key"], seal.parse_envelope(data)))
        return out

    def locks(self, embassy: str, stack: str) -> list[BundleLock]:
        return [lock_of(obj["key"], obj) for obj in self._listed(embassy, stack, "locks")]


def bundle_locks(target: Target, dep: model.Deployment, embassy: str) -> list[BundleLock]:
    """Every custody object of the stack in the embassy's vault with its lock (read-only identity; no content read).
    `BundleLock.problem(retention_days)` says what is missing: for `embassy verify`'s lock checks."""
    return TargetVaults(target, dep).locks(embassy, dep.stack)


def at_once(work: Callable[[T], R], items: Sequence[T]) -> list[R | Exception]:
    """work(item) for each item at once (each embassy's vault and home's SSH answer on their own), each result or
    the exception it raised, in the items' order: the caller decides in that order, as it did one after another."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: T) -> R | Exception:
        try:
            return work(item)
        except Exception as exc:  # handed back to the caller, which raises or names it in order
            return exc

    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(one, items))


def _result(got: R | Exception) -> R:
    if isinstance(got, Exception):
        raise got
    return got


def home_signer(target: Target, public_pem: str) -> seal.Signer:
    """Sign with home's manifest key, on home (it never leaves it; reached through the target): the bytes go in and
    the signature comes back as base64, checked against the public key the bundles carry."""
    home = target.home_host()
    if home is None:  # a site inventory without home, AWS without EMBASSY_HOME_HOST: nothing here holds home's key
        raise HostUnknown(f"target {target.kind} of stack '{target.stack}' has no home host: the custody headers are "
                          "signed on home", "issue the kit through a target that names home (--target lab, "
                          "--target site with home in the inventory, or --target aws with EMBASSY_HOME_HOST set to "
                          "home's SSH address)")
    code = ("import base64,sys\nfrom cryptography.hazmat.primitives import serialization as s\n"
            f"k=s.load_pem_private_key(open({HOME_KEY_FILE!r},'rb').read(),None)\n"
            "sys.stdout.write(base64.b64encode(k.sign(base64.b64decode(sys.stdin.read()))).decode())")
    public = load_public_key(public_pem)

    def sign(data: bytes) -> bytes:
        done = target.run_on(home, f"sudo python3 -c {shlex.quote(code)}", timeout=60,
                             stdin=base64.b64encode(data).decode())
        try:
            signature = base64.b64decode(done.stdout, validate=True)
            public.verify(signature, data)
        except (binascii.Error, ValueError, InvalidSignature):
            raise SignatureInvalid(f"home:{HOME_KEY_FILE}: did not sign the custody headers with the manifest key the "
                                   f"bundles name ({done.stderr.strip()[-200:] or 'other key'})",
                                   "run `embassy deploy` (it records home's public key), then issue again") from None
        return signature
    return sign


@dataclass
class Issued:
    version: int
    threshold: int
    officials: int
    identifier: int
    sheets: list[Path]
    stored: list[dict[str, Any]]  # per embassy: key, lock mode, retain until
    ignored: list[str]  # objects in the vaults whose header was not home's: named, never read


def authentic_headers(store: Store, dep: model.Deployment, public_pem: str,
                      ignored: list[str]) -> dict[str, list[seal.Header]]:
    """Per embassy, the headers home signed; every other object is named in `ignored` (and a vault that cannot be
    read within bounds too): none of them decides anything."""
    found: dict[str, list[seal.Header]] = {}
    every = at_once(lambda emb: store.envelopes(emb.name, dep.stack), dep.embassies)
    for emb, listed in zip(dep.embassies, every, strict=True):
        found[emb.name] = []
        if isinstance(listed, BundleInvalid):
            ignored.append(listed.message)
            continue
        if isinstance(listed, BaseException):
            raise listed  # an unreachable vault: as before, the first in the stack's order
        for key, stored in listed:
            name = f"vault:{emb.name}/{key}"
            if version_of(key, dep.stack) is None:
                ignored.append(f"{name}: not a bundle's key")
                continue
            try:
                if isinstance(stored, str):
                    raise BundleInvalid(f"{name}: {stored}")
                header = seal.authenticate(stored, name, public_pem)
            except (BundleInvalid, SignatureInvalid) as exc:
                ignored.append(exc.message)
                continue
            if (header.stack, header.embassy, key) != (dep.stack, emb.name, object_key(dep.stack, header.version)):
                ignored.append(f"{name}: signed for {header.stack}/{header.embassy} v{header.version}, not this place")
                continue
            found[emb.name].append(header)
    return found


def current_version(store: Store, dep: model.Deployment, public_pem: str | None = None,
                    ignored: list[str] | None = None) -> tuple[int, set[int]]:
    """The newest bundle version home signed in any embassy's vault (0: none), and every identifier it used."""
    if public_pem is None:
        public_pem = vault_verify.public_key_pem(dep, getattr(store, "target", None))
    headers = authentic_headers(store, dep, public_pem, ignored if ignored is not None else [])
    versions = [h.version for hs in headers.values() for h in hs]
    return max(versions, default=0), {h.identifier for hs in headers.values() for h in hs}


def check_lock(got: dict[str, Any], name: str, retention_days: int) -> None:
    """A bundle just stored must be under COMPLIANCE until its write time plus the embassy's retention."""
    problem = lock_of(name, got).problem(retention_days)
    if problem:
        raise VaultRefusedWrite(f"{name}: stored without the lock a bundle needs: {problem}",
                                "the vault's bucket must default to Object Lock COMPLIANCE for the embassy's "
                                "retention_days: fix the bucket, then issue again (the sheets of this version are void)")


def issue(dep: model.Deployment, target: Target, store: Store, secrets_folder: Path, out: Path, *, officials: int,
          threshold: int, rotate: bool | None, now: dt.datetime | None = None, say: Say = lambda _m: None,
          signer: seal.Signer | None = None) -> Issued:
    """rotate: False for init (refused if a kit exists), True for rotate (refused if none), None for either."""
    shares.check_counts(officials, threshold)
    now = now or dt.datetime.now(dt.UTC)
    public_pem = vault_verify.public_key_pem(dep, target)
    ignored: list[str] = []
    newest, taken = current_version(store, dep, public_pem, ignored)
    for reason in ignored:
        say(f"ignored (not home's): {reason}")
    if rotate is None:
        rotate = newest > 0
    if newest and not rotate:
        raise UserError(f"stack '{dep.stack}' already has a custody kit (bundle version {newest} in the vaults)",
                        "its sheets stay valid; `embassy custody rotate` (lab only: not built for AWS) issues version "
                        f"{newest + 1} and new sheets" if target.kind == "aws" else
                        f"run `embassy custody rotate --stack {dep.stack}` to issue version {newest + 1} and new sheets")
    if rotate and not newest:
        raise UserError(f"stack '{dep.stack}' has no custody kit to rotate", f"run `embassy custody init --stack {dep.stack}`")
    version = newest + 1
    if version > seal.MAX_VERSION:
        raise UserError(f"stack '{dep.stack}' has used every bundle version (1..{seal.MAX_VERSION})",
                        "start a kit under a new stack name")
    say(f"gathering the restore secrets of {len(dep.embassies)} embassies (bundle version {version})")
    bundles = gather(dep, target, secrets_folder, version, now)
    sign = signer or home_signer(target, public_pem)
    key = os.urandom(shares.KEY_BYTES)
    words = shares.split(key, officials, threshold, frozenset(taken))
    identifier = shares.identifier_of(words[0])
    say(f"sealing {len(bundles)} bundles, each header signed by home's manifest key")
    for name, b in bundles.items():
        say(f"bundle of {name}: sealed at round {b.sealed_round}" if b.sealed_round else
            f"bundle of {name}: no verified round on this controller (run `embassy verify` first): anchors nothing")
    sealed = at_once(partial(seal.seal, key=key, identifier=identifier, threshold=threshold, officials=officials,
                             sign=sign), list(bundles.values()))
    envelopes = dict(zip(bundles, map(_result, sealed), strict=True))
    del key  # from here on only the officials' shares hold it
    say(f"writing {officials} sheets to {out}")
    written = sheets.write([sheets.Sheet(i + 1, officials, threshold, dep.stack, version, list(bundles), now.date(), w)
                            for i, w in enumerate(words)], out)
    stored = []
    retention = {e.name: e.retention_days for e in dep.embassies}
    key_name = object_key(dep.stack, version)
    say(f"storing bundle version {version} in the vaults of {', '.join(envelopes)} (Object Lock COMPLIANCE)")
    puts = at_once(lambda item: store.put(item[0], key_name, item[1]), list(envelopes.items()))
    for name, put in zip(envelopes, puts, strict=True):  # each vault's answer in the stack's order, checked
        got = _result(put)
        check_lock(got, f"vault:{name}/{key_name}", retention[name])
        stored.append({"embassy": name, "key": got.get("key"), "lock_mode": got.get("lock_mode"),
                       "retain_until": got.get("retain_until")})
    return Issued(version, threshold, officials, identifier, written, stored, ignored)


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
    if len(texts) > seal.MAX_OFFICIALS:
        raise SharesRefused(f"{len(texts)} shares given: a kit has at most {seal.MAX_OFFICIALS} officials",
                            "give the sheets of the officials present, one each")
    parsed = [shares.parse(t) for t in texts]
    for p in parsed:
        if p.text.stack and p.text.stack != stack:
            raise SharesRefused(f"{p.text.source}: a share of stack '{p.text.stack}', not '{stack}'",
                                f"use the sheets of stack {stack}")
    return parsed


def trusted_public_key(dep: model.Deployment, store: Store) -> str | None:
    """The manifest public key known before any bundle opens (the target's trust anchor), else None."""
    try:
        return vault_verify.public_key_pem(dep, getattr(store, "target", None))
    except UserError:
        return None


@dataclass(frozen=True)
class Candidate:
    key: str
    header: seal.Header
    envelope: dict[str, Any]


def _candidates(store: Store, embassy: str, stack: str, failures: list[BundleInvalid]) -> list[Candidate]:
    """The objects of the embassy's vault that have an envelope's shape (bounded); the others go to `failures`."""
    found = []
    for key, stored in store.envelopes(embassy, stack):
        name = f"vault:{embassy}/{key}"
        if version_of(key, stack) is None:  # not a bundle's key: nothing of it is read (bounds the work to MAX_VERSION)
            failures.append(BundleInvalid(f"{name}: not a bundle's key (custody/<stack>/bundle-vNNNN.json)"))
            continue
        try:
            if isinstance(stored, str):
                raise BundleInvalid(f"{name}: {stored}")
            found.append(Candidate(key, seal.header_of(stored, name), stored))
        except BundleInvalid as exc:
            failures.append(exc)
    return found


def _signed(candidates: list[Candidate], embassy: str, stack: str, public_pem: str) -> list[Candidate]:
    """The candidates home signed, for this embassy and stack, at their own key: the only headers a decision reads."""
    out = []
    for c in candidates:
        try:
            h = seal.authenticate(c.envelope, f"vault:{embassy}/{c.key}", public_pem)
        except (BundleInvalid, SignatureInvalid):
            continue
        if (h.stack, h.embassy, c.key) == (stack, embassy, object_key(stack, h.version)):
            out.append(c)
    return out


def _refuse_share(p: shares.ParsedShare, signed: list[Candidate], newest: int, stack: str, embassy: str) -> SharesRefused:
    earlier = [c.header.version for c in signed if c.header.identifier == p.identifier]
    if earlier:
        return SharesRefused(f"{p.text.source}: a share of the earlier bundle version {earlier[0]}; the vault's bundle is "
                             f"version {newest}", f"use the sheets that say 'bundle version: {newest}'")
    return SharesRefused(f"{p.text.source}: a share of no bundle of stack '{stack}' at {embassy} "
                         f"(identifier {p.identifier}): another stack's or another kit's",
                         f"use the sheets of stack {stack}" + (f", bundle version {newest}" if newest else ""))


def open_bundle(dep: model.Deployment, store: Store, embassy: str, texts: list[shares.ShareText],
                say: Say = lambda _m: None, public_pem: str | None = None) -> Bundle:
    """The embassy's newest bundle, opened with the shares and checked to be this embassy's and this stack's.

    SharesRefused (exit 2) names a share that cannot open it; BundleInvalid or SignatureInvalid (exit 1) name the
    object when no bundle of this embassy opens, or the one that opens is not what home sealed for it."""
    parsed = check_shares(texts, dep.stack)
    say(f"reading the custody bundles of {embassy} from its own vault (read-only identity)")
    failures: list[BundleInvalid] = []
    candidates = _candidates(store, embassy, dep.stack, failures)
    if not candidates:
        if failures:
            raise failures[0]
        raise ObjectMissing(f"vault:{embassy}/{PREFIX}{dep.stack}/: no custody bundle",
                            f"run `embassy custody init --stack {dep.stack}` while home exists; restore at another "
                            "embassy meanwhile")
    public_pem = public_pem or trusted_public_key(dep, store)
    signed = _signed(candidates, embassy, dep.stack, public_pem) if public_pem else []
    newest = max((c.header.version for c in signed), default=0)
    # The shares decide which bundle: their own identifier (the one of home's newest version if any share has it).
    ids = Counter(p.identifier for p in parsed)
    newest_ids = {c.header.identifier for c in signed if c.header.version == newest}
    wanted = next((i for i in ids if i in newest_ids), ids.most_common(1)[0][0])
    for p in parsed:
        if p.identifier != wanted:  # shares of two splits never combine; without a known key, the wording is the headers'
            raise _refuse_share(p, signed or candidates, newest or max(c.header.version for c in candidates), dep.stack,
                                embassy)
    if newest and wanted not in newest_ids:
        raise _refuse_share(parsed[0], signed, newest, dep.stack, embassy)
    matching = sorted((c for c in candidates if c.header.identifier == wanted), key=lambda c: -c.header.version)
    if not matching:
        raise _refuse_share(parsed[0], signed, newest, dep.stack, embassy)
    key = shares.combine(parsed, parsed[0].share.member_threshold)  # the shares' own threshold, not a header's
    for c in matching:
        name = f"vault:{embassy}/{c.key}"
        try:
            bundle = seal.unseal(c.envelope, key, name, stack=dep.stack, embassy=embassy)
        except BundleInvalid as exc:
            failures.insert(0, exc)
            continue
        # What opened is this embassy's; its header must be home's too (with the bundle's own key if none was known).
        seal.authenticate(c.envelope, name, public_pem or bundle.manifest_public_key)
        if not public_pem:
            later = [x for x in _signed(candidates, embassy, dep.stack, bundle.manifest_public_key)
                     if x.header.version > bundle.version]
            if later:
                raise _refuse_share(parsed[0], [c, *later], max(x.header.version for x in later), dep.stack, embassy)
        say(f"opened {c.key} (version {bundle.version}): the bundle of {bundle.embassy}, stack {bundle.stack}")
        return bundle
    raise failures[0]

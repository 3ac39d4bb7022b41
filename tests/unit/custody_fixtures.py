"""A controller's secrets folder and lab records for the custody unit tests, and an in-memory vault store.

The store stands in for the vaults' S3 API (the lab test, tests/lab/test_custody.py, uses the real
vaults); everything else the kit does runs as it does on the controller.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy import model
from embassy.custody import kit, seal
from embassy.custody.vaultio import version_of
from embassy.lab.state import LabState, VaultState
from embassy.replication.verify import PUBLIC_KEY_FILE
from embassy.targets import LabTarget

NOW = dt.datetime(2026, 12, 2, 22, 0, tzinfo=dt.UTC)
HOME_KEY = Ed25519PrivateKey.generate()  # home's manifest key: signs the envelopes' headers (on home, in the lab)


def home_sign(data: bytes) -> bytes:
    return HOME_KEY.sign(data)


class MemoryVaults:
    """Each embassy's custody objects, written once (Object Lock: a key is never overwritten)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, bytes]] = {}
        self.planted: set[str] = set()  # keys a hostile host wrote (tests)
        self.lock: dict[str, Any] = {"lock_mode": "COMPLIANCE", "retain_until": "2036-12-01T22:00:00+00:00",
                                     "last_modified": NOW.isoformat()}  # what the lab's buckets report (3650 days)

    def put(self, embassy: str, key: str, envelope: dict[str, Any]) -> dict[str, Any]:
        bucket = self.objects.setdefault(embassy, {})
        # Object Lock: a key's stored version is never replaced; a new one may be written over a planted object
        assert key not in bucket or key in self.planted, f"{key} overwritten"
        bucket[key] = json.dumps(envelope).encode()
        return {"ok": True, "key": key, **self.lock}

    def plant(self, embassy: str, key: str, data: bytes | dict[str, Any]) -> None:
        """What a vault's host can do below S3: any bytes at any key."""
        self.objects.setdefault(embassy, {})[key] = data if isinstance(data, bytes) else json.dumps(data).encode()
        self.planted.add(key)

    def envelopes(self, embassy: str, stack: str) -> list[tuple[str, kit.Stored]]:
        # as vaultio lists them: only a bundle's own key is read
        return [(k, seal.parse_envelope(v) if version_of(k, stack) else "not read")
                for k, v in sorted(self.objects.get(embassy, {}).items()) if k.startswith(f"custody/{stack}/")]


def controller(tmp: Path, dep: model.Deployment) -> tuple[LabState, Path, list[str]]:
    """Lab records (vaults' reader credentials and CA, the manifest public key) and the secrets folder;
    returns them with every secret value written."""
    lab_dir = tmp / "lab"
    lab_dir.mkdir()
    pem = HOME_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (lab_dir / PUBLIC_KEY_FILE).write_bytes(pem)
    (lab_dir / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n")
    folder = lab_dir / "secrets"
    folder.mkdir(mode=0o700)
    values: list[str] = []
    vaults = []
    for emb in dep.embassies:
        creds = {"access_key_id": f"LABREADER{secrets.token_hex(6).upper()}", "secret_access_key": secrets.token_urlsafe(30)}
        (lab_dir / f"reader-{emb.name}.json").write_text(json.dumps(creds))
        (lab_dir / f"reader-{emb.name}.json").chmod(0o600)  # as the lab writes it: a vault identity's keys are private
        values += creds.values()
        vaults.append(VaultState.model_construct(
            embassy=emb.name, dns_name=f"vault-{emb.name}.lab", endpoint=f"https://vault-{emb.name}.lab:8443",
            bucket=f"embassy-{emb.name}", retention_days=emb.retention_days, ca_file=str(lab_dir / "ca.crt"),
            reader_credentials=str(lab_dir / f"reader-{emb.name}.json"),
            agent_credentials=str(lab_dir / f"agent-{emb.name}.json")))
        for name in (f"pgbackrest-{emb.name}.pass", f"restic-{emb.name}.pass"):
            value = secrets.token_urlsafe(48)
            (folder / name).write_text(value + "\n")
            values.append(value)
    lab = LabState.model_construct(lab_id=99, stack=dep.stack, dir=str(lab_dir), vaults=vaults, hosts=[],
                                   controller_netns="emb99-ctl", controller_address="10.99.0.1",
                                   mirror_url="http://10.99.0.1:8080")
    return lab, folder, values


def lab_target(dep: model.Deployment, lab: LabState) -> LabTarget:
    """The lab target over these records: what the kit reaches the vaults and home through."""
    return LabTarget(dep, lab)


def issue(dep: model.Deployment, lab: LabState, store: MemoryVaults, folder: Path, out: Path, *, rotate: bool = False,
          officials: int = 5, threshold: int = 3) -> kit.Issued:
    return kit.issue(dep, lab_target(dep, lab), store, folder, out, officials=officials, threshold=threshold,
                     rotate=rotate, now=NOW, signer=home_sign)

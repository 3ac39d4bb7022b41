"""How the controller reaches one embassy's vault: endpoint, bucket, addressing, CA, and where each identity's
credentials come from. Every target (lab, site, aws) hands out these; the data plane reads vaults only through them.

Credentials never travel in an inventory, an argv or a spec: a spec names a file (a JSON file
`{"access_key_id", "secret_access_key"[, "session_token"]}`, readable by its owner only) or an environment
prefix (`<PREFIX>_ACCESS_KEY_ID`, `<PREFIX>_SECRET_ACCESS_KEY`[, `<PREFIX>_SESSION_TOKEN`]), and the client that
needs them (run in the vault's namespace, if any) reads them there.
"""

from __future__ import annotations

import json
import os
import ssl
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embassy.errors import CredentialsUnavailable
from embassy.replication import vaultnet

SYSTEM_CA = "system"  # ca_file: the operating system's trust store, chosen explicitly (never "no verification")
IDENTITIES = ("reader", "agent", "custody")  # read-only (verify, restore), write (agents), custody bundles
ENV_PARTS = {"access_key_id": "ACCESS_KEY_ID", "secret_access_key": "SECRET_ACCESS_KEY", "session_token": "SESSION_TOKEN"}


@dataclass(frozen=True)
class CredentialSource:
    """Where one identity's credentials are read from: a file or an environment prefix (exactly one)."""

    file: str | None = None
    env: str | None = None

    def as_spec(self) -> dict[str, str]:
        return {"file": self.file} if self.file else {"env": str(self.env)}

    def check(self, what: str, environ: Mapping[str, str] | None = None) -> None:
        """Raise CredentialsUnavailable (exit 2, with a HINT) unless the credentials can be read from here."""
        read(self.as_spec(), what, environ, check_only=True)


def _private_file(path: Path, what: str) -> None:
    try:
        info = path.stat()
    except OSError as exc:
        raise CredentialsUnavailable(f"{what}: cannot read {path}: {exc.strerror or exc}",
                                     "check the path in the site inventory and that this user may read it") from None
    if not stat.S_ISREG(info.st_mode):
        raise CredentialsUnavailable(f"{what}: {path} is not a regular file",
                                     "point the inventory at the JSON credentials file itself")
    if info.st_mode & 0o077:
        raise CredentialsUnavailable(f"{what}: {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o})",
                                     f"chmod 600 {path}: a vault identity's keys are its owner's alone")


def read(spec: Mapping[str, Any], what: str, environ: Mapping[str, str] | None = None,
         check_only: bool = False) -> dict[str, str]:
    """The credentials a spec names: {"access_key_id", "secret_access_key"[, "session_token"]}."""
    env = os.environ if environ is None else environ
    if spec.get("file"):
        path = Path(str(spec["file"]))
        _private_file(path, what)
        try:
            got = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CredentialsUnavailable(f"{what}: {path} is not a JSON credentials file ({exc})",
                                         'write {"access_key_id": …, "secret_access_key": …} into it') from None
        if not isinstance(got, dict) or not all(isinstance(got.get(k), str) and got[k]
                                                for k in ("access_key_id", "secret_access_key")):
            raise CredentialsUnavailable(f"{what}: {path} lacks access_key_id or secret_access_key",
                                         'write {"access_key_id": …, "secret_access_key": …} into it')
        return {k: str(got[k]) for k in ENV_PARTS if isinstance(got.get(k), str)}
    prefix = str(spec.get("env") or "")
    names = {k: f"{prefix}_{suffix}" for k, suffix in ENV_PARTS.items()}
    missing = [names[k] for k in ("access_key_id", "secret_access_key") if not env.get(names[k])]
    if not prefix or missing:
        raise CredentialsUnavailable(f"{what}: {', '.join(missing) or 'no environment prefix'} not set",
                                     f"export {names['access_key_id']} and {names['secret_access_key']} "
                                     "(and _SESSION_TOKEN for temporary credentials) before running the command")
    return {} if check_only else {k: env[n] for k, n in names.items() if env.get(n)}


@dataclass(frozen=True)
class VaultAccess:
    """One embassy's vault as a client reaches it."""

    embassy: str
    endpoint: str  # https://host[:port]
    bucket: str
    ca_file: str  # a PEM file, or SYSTEM_CA
    addressing: str = "path"  # path | virtual
    region: str = "us-east-1"
    netns: str | None = None  # a lab's vault is reachable only from inside a lab namespace
    identities: Mapping[str, CredentialSource] = field(default_factory=dict)

    def identity(self, name: str) -> CredentialSource:
        source = self.identities.get(name)
        if source is None:
            raise CredentialsUnavailable(f"vault of {self.embassy}: no '{name}' identity in the target",
                                         f"name where the {name} identity's credentials are read from "
                                         f"(credentials.{name}: file or env) in the site inventory")
        return source

    def client_spec(self, identity: str) -> dict[str, Any]:
        """What a client in the vault's namespace needs to open an S3 client: never a secret itself."""
        source = self.identity(identity)
        source.check(f"vault of {self.embassy}, identity {identity}")
        return {"endpoint": self.endpoint, "bucket": self.bucket, "ca_file": self.ca_file,
                "addressing": self.addressing, "region": self.region, "credentials": source.as_spec()}

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` where the vault is reachable (inside its namespace, if it has one)."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)


def s3_client(spec: Mapping[str, Any]) -> Any:
    """A boto3 S3 client from a client spec: TLS verified against the spec's CA (never the environment's bundle)."""
    creds = spec["credentials"]
    if isinstance(creds, str):  # a spec of callers that still name the lab's credentials file directly
        creds = {"file": creds}
    keys = read(creds, f"vault {spec['endpoint']}")
    ca = spec.get("ca_file") or ""
    if ca == SYSTEM_CA:  # the OS store by path: AWS_CA_BUNDLE and friends in the environment never decide
        ca = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    if not ca:
        raise CredentialsUnavailable(f"vault {spec['endpoint']}: no CA to verify it with",
                                     f"set vault.ca_file to the vault's CA (PEM) or to '{SYSTEM_CA}'")
    return vaultnet.client(spec["endpoint"], ca, keys, region=spec.get("region") or "us-east-1",
                           addressing=spec.get("addressing") or "path")

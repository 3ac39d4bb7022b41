"""The site inventory: a host nation's own data centre, described for `--target site --inventory FILE`.

One YAML file per federation (examples/sites/federation.yaml): per embassy its hosts (SSH address, port, user,
an optional jump host, the known_hosts file that pins their keys), its S3-compatible vault (https endpoint,
bucket, CA file, path-style or virtual-host addressing) and where each identity's credentials are read from (a
file path or an environment prefix: never the credentials themselves).

`netns` (top level, or per host or vault): run the clients of those addresses inside that network namespace.
Only a lab's own inventory (written by `embassy lab up`) uses it: lab addresses exist nowhere else. `lab_id`
marks that inventory too: such a site *is* that lab, and only then may the manifest key the lab recorded at
deploy stand in for `data-embassy:manifest_public_key`.

The adversaries it is checked against: an inventory (or whoever edits it) that writes secrets inline (refused,
naming the key path, before anything else is read), points a vault at plain http or at an endpoint with
credentials or a query in its URL, leaves TLS unverified, or smuggles ssh options through a host name.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from embassy import model
from embassy.errors import InventoryInvalid
from embassy.vaultaccess import SYSTEM_CA, CredentialSource, VaultAccess

VERSION = 1
MAX_INVENTORY_BYTES = 1 << 20
NAME = r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"
# A DNS name or an IP address; never starting with '-' (an ssh option), never a space or a shell character.
ADDRESS = r"^[A-Za-z0-9_\[]([A-Za-z0-9_.:\]-]{0,251}[A-Za-z0-9\]])?$"
USER = r"^[a-z_][a-z0-9_-]{0,31}$"
NETNS = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
ENV_PREFIX = r"^[A-Z][A-Z0-9_]{0,63}$"
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
REGION = r"^[a-z0-9-]{1,32}$"
# Keys that only ever hold a secret: written in an inventory, they are a leak, whatever their value.
SECRET_KEYS = {"secret", "secret_key", "secret_access_key", "aws_secret_access_key", "secretkey", "secretaccesskey",
               "access_key", "access_key_id", "aws_access_key_id", "accesskey", "accesskeyid", "session_token",
               "aws_session_token", "token", "password", "passphrase", "private_key", "cipher_pass", "credentials_json"}
# Values that look like a secret wherever they stand: AWS access key ids, PEM private keys.
SECRET_VALUES = (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), re.compile(r"PRIVATE KEY-----"))
HINT = "see examples/sites/federation.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(_Strict):
    """Where one identity's credentials are read from: a file or an environment prefix (exactly one)."""

    file: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    env: StrictStr | None = Field(default=None, pattern=ENV_PREFIX)

    @model_validator(mode="after")
    def _exactly_one(self) -> Identity:
        if (self.file is None) == (self.env is None):
            model.refuse("give exactly one of `file` (a JSON credentials file, mode 0600) or `env` (a variable prefix)",
                         "e.g. reader: {file: /etc/embassy/lu/reader.json} or reader: {env: EMBASSY_LU_READER}")
        return self


class Identities(_Strict):
    reader: Identity | None = None  # read-only: verify, restore (the stack's restore role on AWS)
    agent: Identity | None = None  # write, never delete or unlock: the replication agents
    custody: Identity | None = None  # the custody bundles


class Jump(_Strict):
    address: StrictStr = Field(pattern=ADDRESS)
    port: StrictInt = Field(default=22, ge=1, le=65535)
    user: StrictStr = Field(pattern=USER)


class SiteHost(_Strict):
    name: StrictStr = Field(pattern=NAME)
    address: StrictStr = Field(pattern=ADDRESS)
    port: StrictInt = Field(default=22, ge=1, le=65535)
    user: StrictStr = Field(default="admin", pattern=USER)
    jump: Jump | None = None
    identity_file: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    # Host keys are pinned, never accepted on first use: the file that holds them (for the jump host too).
    known_hosts: StrictStr = Field(min_length=1, max_length=4096)
    netns: StrictStr | None = Field(default=None, pattern=NETNS)


class SiteVault(_Strict):
    endpoint: StrictStr = Field(max_length=512)
    bucket: StrictStr = Field(pattern=BUCKET)
    ca_file: StrictStr = Field(min_length=1, max_length=4096)  # a PEM file, or "system" (the OS trust store)
    addressing: Literal["path", "virtual"] = "path"
    region: StrictStr = Field(default="us-east-1", pattern=REGION)
    netns: StrictStr | None = Field(default=None, pattern=NETNS)

    @field_validator("endpoint")
    @classmethod
    def _https_only(cls, endpoint: str) -> str:
        parts = urlsplit(endpoint)
        if parts.scheme != "https":
            model.refuse(f"'{endpoint[:80]}' is not an https URL",
                         "a vault is reached over TLS only: https://<host>[:port], with its CA in ca_file")
        if parts.username or parts.password or "@" in parts.netloc:
            model.refuse("the endpoint carries credentials in its URL",
                         "write https://<host>[:port] only; credentials are read from credentials.<identity>")
        if parts.query or parts.fragment or parts.path not in ("", "/") or not parts.hostname:
            model.refuse(f"'{endpoint[:80]}' is not https://<host>[:port]",
                         "give the endpoint without path, query or fragment; the bucket goes in `bucket`")
        return endpoint.rstrip("/")


class Network(_Strict):
    """What the hardening roles must know of the site's network (roles/site.yml): who may reach sshd, where logs
    go, which apt mirror the hosts use. Without it `harden --target site` refuses: a firewall with no SSH source
    would lock the operator out."""

    # The address the hosts see the controller at: an SSH source, and the one source of the state service's queries.
    controller_address: StrictStr | None = Field(default=None, max_length=64)
    # Who may reach sshd (addresses or CIDRs: the controller, the DC's bastion); default [controller_address].
    ssh_sources: tuple[StrictStr, ...] | None = Field(default=None, min_length=1, max_length=32)
    syslog_target: StrictStr | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\[\]-]{1,250}:[0-9]{1,5}$")
    mirror_url: StrictStr | None = Field(default=None, max_length=512)

    @field_validator("controller_address")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                model.refuse(f"'{value[:64]}' is not an IP address", "the address the hosts see the controller at")
        return value

    @field_validator("ssh_sources")
    @classmethod
    def _networks(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for source in value or ():
            try:
                net = ipaddress.ip_network(source, strict=True)
            except ValueError:
                model.refuse(f"'{source[:64]}' is not an address or a CIDR", "e.g. 10.60.0.5 or 10.60.0.0/28")
            if net.prefixlen == 0:
                model.refuse(f"'{source}' opens sshd to every address", "name the controller or the DC's bastion")
        return value

    @field_validator("mirror_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
                model.refuse(f"'{value[:80]}' is not an apt mirror URL", "http(s)://<host>[:port]/<path>, no credentials")
        return value


class SiteEmbassy(_Strict):
    hosts: tuple[SiteHost, ...] = Field(min_length=1, max_length=model.MAX_HOSTS)
    vault: SiteVault
    credentials: Identities = Identities()


class SiteHome(_Strict):
    hosts: tuple[SiteHost, ...] = Field(min_length=1, max_length=1)


class Inventory(_Strict):
    version: Literal[1]
    stack: StrictStr = Field(pattern=model.STACK_NAME.pattern)
    lab_id: StrictInt | None = Field(default=None, ge=0, le=99)  # only the lab's own inventory
    netns: StrictStr | None = Field(default=None, pattern=NETNS)  # default for every host and vault
    network: Network | None = None  # the hardening's facts of the site's network (harden --target site)
    home: SiteHome | None = None
    embassies: dict[StrictStr, SiteEmbassy] = Field(min_length=1)

    def host_netns(self, host: SiteHost) -> str | None:
        return host.netns or self.netns

    def vault_access(self, embassy: str) -> VaultAccess:
        site = self.embassies[embassy]
        v, creds = site.vault, site.credentials
        identities = {name: CredentialSource(file=i.file, env=i.env)
                      for name, i in (("reader", creds.reader), ("agent", creds.agent), ("custody", creds.custody))
                      if i is not None}
        return VaultAccess(embassy=embassy, endpoint=v.endpoint, bucket=v.bucket, ca_file=v.ca_file,
                           addressing=v.addressing, region=v.region, netns=v.netns or self.netns, identities=identities)


def _inline_secrets(value: Any, where: str = "") -> list[tuple[str, str]]:
    """(key path, why) of every secret written into the inventory itself."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if str(key).lower().replace("-", "_") in SECRET_KEYS:
                found.append((path, f"'{key}' holds a secret"))
            else:
                found += _inline_secrets(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _inline_secrets(item, f"{where}[{i}]")
    elif isinstance(value, str) and any(p.search(value) for p in SECRET_VALUES):
        found.append((where, "the value looks like an access key id or a private key"))
    return found


def _issues_of(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top)"
        hint = (err.get("ctx") or {}).get("hint")
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" + (f" (HINT: {hint})" if hint else ""))
    return lines


def parse(text: str, source: str) -> Inventory:
    """The validated inventory in `text`; InventoryInvalid naming the key path otherwise."""
    try:
        doc = model._parse_yaml(text, source, "inventory")
    except model.ConfigInvalid as exc:
        raise InventoryInvalid(f"{source}: {exc.issues[0].path}: {exc.issues[0].message}", exc.issues[0].hint) from None
    if not isinstance(doc, dict):
        raise InventoryInvalid(f"{source}: not a mapping", f"an inventory starts with `version: 1`; {HINT}")
    secrets = _inline_secrets(doc)
    if secrets:
        shown = "; ".join(f"{path}: {why}" for path, why in secrets[:5])
        raise InventoryInvalid(f"{source}: a secret is written into the inventory ({shown})",
                               "remove it from the file (and rotate it: it was on disk in plain text); name where it is "
                               "read from instead: credentials.<identity>: {file: PATH} or {env: PREFIX}")
    try:
        return Inventory.model_validate(doc)
    except ValidationError as exc:
        issues = _issues_of(exc)
        raise InventoryInvalid(f"{source}: {'; '.join(issues[:6])}", HINT) from None


def _resolve(base: Path, path: str | None) -> str | None:
    if path is None or path == SYSTEM_CA:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _with_paths(inv: Inventory, base: Path) -> Inventory:
    """Relative file paths are relative to the inventory's own folder."""
    def host(h: SiteHost) -> SiteHost:
        return h.model_copy(update={"identity_file": _resolve(base, h.identity_file),
                                    "known_hosts": _resolve(base, h.known_hosts)})

    def ident(i: Identity | None) -> Identity | None:
        return None if i is None else i.model_copy(update={"file": _resolve(base, i.file)})

    embassies = {
        name: e.model_copy(update={
            "hosts": tuple(host(h) for h in e.hosts),
            "vault": e.vault.model_copy(update={"ca_file": _resolve(base, e.vault.ca_file)}),
            "credentials": Identities(reader=ident(e.credentials.reader), agent=ident(e.credentials.agent),
                                      custody=ident(e.credentials.custody))})
        for name, e in inv.embassies.items()}
    home = inv.home.model_copy(update={"hosts": tuple(host(h) for h in inv.home.hosts)}) if inv.home else None
    return inv.model_copy(update={"embassies": embassies, "home": home})


def load(path: Path, dep: model.Deployment) -> Inventory:
    """Read, validate and bind an inventory to the stack: same stack, only embassies the stack declares."""
    source = str(path)
    try:
        if path.stat().st_size > MAX_INVENTORY_BYTES:
            raise InventoryInvalid(f"{source}: more than {MAX_INVENTORY_BYTES} bytes", "check --inventory names the file")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InventoryInvalid(f"{source}: cannot read it: {exc.strerror or exc}",
                               "check the path given to --inventory and that this user may read it") from None
    except UnicodeDecodeError:
        raise InventoryInvalid(f"{source}: not UTF-8 text", f"an inventory is YAML text; {HINT}") from None
    inv = _with_paths(parse(text, source), path.resolve().parent)
    if inv.stack != dep.stack:
        raise InventoryInvalid(f"{source}: describes stack '{inv.stack}', not '{dep.stack}'",
                               f"use the inventory of stack '{dep.stack}', or --stack {inv.stack}")
    unknown = sorted(set(inv.embassies) - {e.name for e in dep.embassies})
    if unknown:
        raise InventoryInvalid(f"{source}: embassies.{unknown[0]}: stack '{dep.stack}' declares no such embassy",
                               f"use the names of data-embassy:embassies: {', '.join(e.name for e in dep.embassies)}")
    return inv


def dump(inv: Inventory) -> str:
    """The inventory as YAML (what `embassy lab up` writes)."""
    return yaml.safe_dump(inv.model_dump(mode="json", exclude_none=True), sort_keys=False)

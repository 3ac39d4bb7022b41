"""The typed model of a data-embassy stack, read once from the stack config and validated.

Everything else (the Pulumi program, the lab, the inventories, the agents, the drill) takes the
model from here; nothing re-parses the stack YAML on its own.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from embassy.assurance import schedule as schedule_lib
from embassy.errors import UserError

NAMESPACE = "data-embassy"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
IAM_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")
# Pulumi's own rule for a stack name (sdk/go/common/tokens); the name becomes a path (Pulumi.<stack>.yaml).
STACK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# An EC2 instance type is family.size (m5.xlarge, m7i-flex.large, u7i-12tb.224xlarge): never a shell word.
INSTANCE_TYPE_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*\.[a-z0-9]+(-[a-z0-9]+)*$"
# What AWS accepts in a tag value (classification becomes one), at most 256 characters.
TAG_VALUE_PATTERN = r"^[\p{L}\p{N} _.:/=+@-]*$"
MAX_TAG_VALUE = 256
MAX_RETENTION_DAYS = 36500  # S3 Object Lock's upper bound for a default retention (100 years)
MAX_HOSTS = 8
# The Debian release of the hosts (the AMI the stack picks, the lab image): major version -> codename.
# 13 (trixie): 12 (bookworm) is oldstable under LTS only since June 2026; a stack may still say 12.
DEBIAN_RELEASES = {12: "bookworm", 13: "trixie"}
DEFAULT_DEBIAN_RELEASE = 13
MIN_VOLUME_GB, MAX_VOLUME_GB = 20, 16384  # the Debian AMI's root needs 20 GiB; gp3 ends at 16 TiB
# A cold embassy only gets archived WAL (archive_timeout); it cannot meet a tighter RPO. The stack says
# what its cold embassies promise in `cold_rpo_seconds` (default and minimum: this).
COLD_MIN_RPO_SECONDS = 60
MAX_COLD_RPO_SECONDS = 86400
# Admin networks are where operators reach an enclave from (an office, a bastion, a VPN exit). Together an
# embassy's admin networks may cover at most a /16 of public IPv4 and a /48 of public IPv6; more is the
# internet opened piecewise (0.0.0.0/1 + 128.0.0.0/1 is 0.0.0.0/0).
ADMIN_PUBLIC_MAX_PREFIX = {4: 16, 6: 48}
NON_PUBLIC_RANGES = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))
IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


# --------------------------------------------------------------------------- nations catalog


class Nation(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    name: str
    regions: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # partition -> regions

    def partition_of(self, region: str) -> str | None:
        for partition, names in self.regions.items():
            if region in names:
                return partition
        return None

    @property
    def all_regions(self) -> list[str]:
        return [r for names in self.regions.values() for r in names]


@cache
def nations() -> dict[str, Nation]:
    """The host-nation catalog shipped with the package (src/embassy/nations.yaml)."""
    text = resources.files("embassy").joinpath("nations.yaml").read_text()
    raw = yaml.safe_load(text)["nations"]
    return {
        code: Nation(code=code, name=entry["name"], regions={p: tuple(r) for p, r in entry["regions"].items()})
        for code, entry in raw.items()
    }


def region_nation(region: str) -> Nation | None:
    """The nation a region is physically located in, if the catalog knows it."""
    for nation in nations().values():
        if nation.partition_of(region):
            return nation
    return None


# --------------------------------------------------------------------------- the model


class Mode(StrEnum):
    WARM = "warm"  # streaming standby + vault
    COLD = "cold"  # vault only


class RegisterKind(StrEnum):
    POSTGRES = "postgres"
    FILES = "files"


def refuse(message: str, hint: str) -> NoReturn:
    """Fail a field validator with its own hint (carried to the ConfigIssue)."""
    raise PydanticCustomError("embassy", "{message}", {"message": message, "hint": hint})


def public_addresses(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> dict[int, int]:
    """How many public addresses (not RFC 1918, RFC 6598 or ULA) the union of `networks` covers, per IP version."""
    networks = list(networks)
    counts = {4: 0, 6: 0}
    for version in (4, 6):
        ranges: list[Any] = [p for p in NON_PUBLIC_RANGES if p.version == version]
        union: Iterable[Any] = ipaddress.collapse_addresses(n for n in networks if n.version == version)
        for net in union:  # disjoint blocks: a private range lies inside one, or holds it, or misses it
            counts[version] += net.num_addresses
            for private in ranges:
                if private.subnet_of(net):
                    counts[version] -= private.num_addresses
                elif net.subnet_of(private):
                    counts[version] -= net.num_addresses
    return counts


def admin_networks_too_broad(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """Why a set of admin networks opens too much of the internet, or None: judged on their union."""
    networks = list(networks)
    for version, count in public_addresses(networks).items():
        prefix = ADMIN_PUBLIC_MAX_PREFIX[version]
        if count > 2 ** ((32 if version == 4 else 128) - prefix):
            union: Iterable[Any] = ipaddress.collapse_addresses(n for n in networks if n.version == version)
            return (f"together they cover {count} public IPv{version} addresses ({', '.join(map(str, union))}), "
                    f"more than a /{prefix}")
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HomeState(_Strict):
    name: StrictStr = Field(min_length=1, max_length=MAX_TAG_VALUE, pattern=r"^[^\x00-\x1f\x7f]+$")
    code: StrictStr = Field(pattern=r"^[A-Z]{2}$")


class Embassy(_Strict):
    name: StrictStr = Field(pattern=NAME_PATTERN)
    nation: StrictStr = Field(pattern=r"^[A-Z]{2}$")
    region: StrictStr = Field(max_length=64, pattern=r"^[a-z]{2,}(-[a-z]+)+-\d+$")
    retention_days: StrictInt = Field(ge=1, le=MAX_RETENTION_DAYS)
    admin_cidrs: tuple[StrictStr, ...] = ()
    mode: Mode = Mode.WARM
    instance_type: StrictStr = Field(default="m5.xlarge", max_length=64,  # Nitro Enclaves capable, 4 vCPU / 16 GiB
                                     pattern=INSTANCE_TYPE_PATTERN)
    host_count: StrictInt = Field(default=1, ge=1, le=MAX_HOSTS)
    volume_size_gb: StrictInt = Field(default=50, ge=MIN_VOLUME_GB, le=MAX_VOLUME_GB)

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs_are_closed(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        nets = []
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                refuse(f"invalid CIDR '{cidr}': {exc}", "give the admin network as a CIDR such as 203.0.113.0/28 "
                       "(host bits zero), never 0.0.0.0/0 or ::/0")
            if net.prefixlen == 0:
                refuse(f"CIDR '{cidr}' opens the enclave to the whole internet",
                       "give the admin network as a CIDR such as 203.0.113.0/28, never 0.0.0.0/0 or ::/0")
            nets.append(net)
        broad = admin_networks_too_broad(nets)
        if broad:
            refuse(f"admin networks open the enclave too widely: {broad}",
                   f"admin networks are offices, bastions or VPN exits: together at most a /{ADMIN_PUBLIC_MAX_PREFIX[4]} "
                   f"of public IPv4 and a /{ADMIN_PUBLIC_MAX_PREFIX[6]} of IPv6 (private ranges do not count), "
                   "e.g. 203.0.113.0/28")
        for net in nets:  # ::ffff:0:0/96 is the whole IPv4 internet written as IPv6
            if net.version == 6 and net.overlaps(IPV4_MAPPED):
                refuse(f"CIDR '{net}' holds IPv4-mapped addresses ({IPV4_MAPPED})",
                       "write an IPv4 admin network as IPv4, e.g. 203.0.113.0/28")
        return cidrs

    @property
    def partition(self) -> str:
        nation = nations().get(self.nation)
        return (nation.partition_of(self.region) if nation else None) or "aws"


class Register(_Strict):
    name: StrictStr = Field(pattern=NAME_PATTERN)
    kind: RegisterKind
    priority: StrictInt = Field(ge=1)
    rpo_seconds: StrictInt = Field(ge=1)
    rto_seconds: StrictInt = Field(ge=1)
    # Which embassies hold a replica; default: every embassy.
    embassies: tuple[StrictStr, ...] | None = None


class Principals(_Strict):
    """IAM principals of the home state: the only ones allowed to administer the embassy keys."""

    key_admins: tuple[StrictStr, ...] = ()
    break_glass: tuple[StrictStr, ...] = ()
    # Who may assume the agent (write) and restore (read) roles; empty: the key administrators.
    agents: tuple[StrictStr, ...] = ()
    restorers: tuple[StrictStr, ...] = ()

    @field_validator("key_admins", "break_glass", "agents", "restorers")
    @classmethod
    def _are_iam_arns(cls, arns: tuple[str, ...]) -> tuple[str, ...]:
        for arn in arns:
            if not IAM_ARN.match(arn):
                refuse(f"'{arn}' is not an IAM role or user ARN",
                       "give full ARNs such as arn:aws:iam::111122223333:role/embassy-key-admin")
        return arns


# A systemd calendar expression: weekdays, dates, times, ranges and repetitions; no quotes, no newlines (it is
# written into a unit file), at most 100 characters; then read by systemd-analyze (schedule.check).
SCHEDULE_PATTERN = r"^[A-Za-z0-9*/:.,~ _+-]{1,100}$"


class RestoreTests(_Strict):
    """data-embassy:restore_tests: when each embassy proves on its own that it can restore (issue 25)."""

    schedule: StrictStr = Field(default="weekly", pattern=SCHEDULE_PATTERN)
    point: Literal["latest", "random"] = "random"
    window_days: StrictInt = Field(default=30, ge=1, le=3650)

    @field_validator("schedule")
    @classmethod
    def _is_a_systemd_schedule(cls, value: str) -> str:
        try:
            schedule_lib.check(value)
        except schedule_lib.ScheduleInvalid as exc:
            refuse(exc.reason, exc.hint)
        return value


class Deployment(_Strict):
    """One stack: the home state, its embassies and the registers they hold."""

    stack: StrictStr = Field(pattern=STACK_NAME.pattern)
    state: HomeState
    embassies: tuple[Embassy, ...]
    registers: tuple[Register, ...]
    principals: Principals = Principals()
    classification: StrictStr = Field(default="restricted", min_length=1, max_length=MAX_TAG_VALUE,
                                      pattern=TAG_VALUE_PATTERN)
    # The RPO every cold embassy promises at best: it only receives whole WAL segments (archive_timeout).
    cold_rpo_seconds: StrictInt = Field(default=COLD_MIN_RPO_SECONDS, ge=COLD_MIN_RPO_SECONDS, le=MAX_COLD_RPO_SECONDS)
    restore_tests: RestoreTests = RestoreTests()
    # The hosts' Debian release: the AMI filter (debian-<release>-<arch>-*) and the lab image follow it.
    debian_release: StrictInt = DEFAULT_DEBIAN_RELEASE
    # Home's manifest-signing public key (PEM, Ed25519): the only trust anchor of verify and restore outside the lab.
    manifest_public_key: StrictStr | None = Field(default=None, max_length=4096)

    @field_validator("debian_release")
    @classmethod
    def _is_a_supported_release(cls, release: int) -> int:
        if release not in DEBIAN_RELEASES:
            refuse(f"Debian {release} is not a release the roles and deploys support",
                   "use a Debian major version the roles support: "
                   + ", ".join(f"{n} ({name})" for n, name in DEBIAN_RELEASES.items()))
        return release

    @field_validator("manifest_public_key")
    @classmethod
    def _is_ed25519_public_key(cls, pem: str | None) -> str | None:
        if pem is None:
            return None
        problem = ed25519_public_key_problem(pem)
        if problem:
            refuse(f"not an Ed25519 public key: {problem}",
                   "give home's manifest public key as the PEM block `embassy custody init` or the agent deploy "
                   "prints (-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----, an Ed25519 key)")
        return pem

    def embassy(self, name: str) -> Embassy:
        for embassy in self.embassies:
            if embassy.name == name:
                return embassy
        raise KeyError(name)

    def holders(self, register: Register) -> list[Embassy]:
        """The embassies holding a replica of a register."""
        if register.embassies is None:
            return list(self.embassies)
        return [e for e in self.embassies if e.name in register.embassies]

    def registers_in_restore_order(self) -> list[Register]:
        return sorted(self.registers, key=lambda r: r.priority)

    def rpo_bound(self, register: Register, embassy: Embassy) -> int:
        """The RPO an embassy promises for a register: its rpo_seconds at a warm embassy; at a cold one,
        never tighter than the stack's cold_rpo_seconds (a cold vault only receives whole WAL segments)."""
        if embassy.mode is Mode.COLD:
            return max(register.rpo_seconds, self.cold_rpo_seconds)
        return register.rpo_seconds


def ed25519_public_key_problem(pem: str) -> str | None:
    """Why `pem` is not one Ed25519 public key in PEM (SubjectPublicKeyInfo), or None.

    A private key, a certificate, another algorithm or two keys in one value are refused: whoever edits the
    stack config must see the one key that verify and restore will trust."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = pem.strip()
    if "PRIVATE KEY" in text:
        return "this is a private key; the stack config takes only the public key"
    if text.count("-----BEGIN ") != 1 or not text.startswith("-----BEGIN PUBLIC KEY-----") \
            or not text.endswith("-----END PUBLIC KEY-----"):
        return "expected exactly one PEM block -----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----"
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError) as exc:
        return f"the PEM does not decode ({str(exc)[:120]})"
    if not isinstance(key, Ed25519PublicKey):
        return f"it is a {type(key).__name__.removeprefix('_').replace('PublicKey', '')} key, not Ed25519"
    return None


# --------------------------------------------------------------------------- errors


class ConfigIssue(BaseModel):
    """One problem in a stack config, with the key path that holds it and what to do."""

    path: str
    message: str
    hint: str

    def render(self) -> str:
        return f"error: {_printable(self.path)}: {_printable(self.message)}\nHINT: {_printable(self.hint)}"


# Control characters from the input are shown escaped: a key or value holding "\nHINT: …" forges no line.
_CONTROL = {c: repr(chr(c))[1:-1] for c in (*range(0x20), 0x7f)}


def _printable(text: str) -> str:
    return text.translate(_CONTROL)


class ConfigInvalid(UserError):
    """A stack config that cannot be used: exit 2, each issue with its key path and hint."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__("; ".join(f"{i.path}: {i.message}" for i in issues) or f"{source} is invalid",
                         issues[0].hint if issues else "see README.md, 'Stack configuration'")

    def __str__(self) -> str:
        return f"{self.source}: {len(self.issues)} error(s)\n" + self.render()

    def render(self) -> str:
        return "\n".join(i.render() for i in self.issues)


def _invalid(source: str, path: str, message: str, hint: str) -> ConfigInvalid:
    return ConfigInvalid(source, [ConfigIssue(path=path, message=message, hint=hint)])


README_HINT = "see README.md, 'Stack configuration'"
# Words YAML 1.1 (PyYAML) reads as booleans when unquoted: `nation: NO` is `nation: false`.
YAML_BOOLEANS = "yes/no/on/off/true/false/y/n"


def _field_names() -> set[str]:
    return {f for m in (HomeState, Embassy, Register, Principals, Deployment) for f in m.model_fields} - {"stack"}


def _hint(err: Any) -> str:
    """A hint that points the right way for one pydantic error: the field, the input and the bound it broke."""
    kind, loc, value, ctx = err["type"], tuple(err["loc"]), err.get("input"), err.get("ctx") or {}
    field = next((str(part) for part in reversed(loc) if isinstance(part, str)), "")
    if "hint" in ctx:
        return str(ctx["hint"])
    if kind == "missing":
        return f"add the key; {README_HINT}"
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(field, sorted(_field_names()), n=1)
        return (f"did you mean '{near[0]}'? " if near else "remove the key or fix its spelling; ") + README_HINT
    if isinstance(value, bool) and kind in ("string_type", "enum"):
        return (f"YAML reads an unquoted {YAML_BOOLEANS} as a boolean: quote the value, "
                f"e.g. {field or 'nation'}: \"{'NO' if field in ('nation', 'code') else 'yes'}\"")
    if kind == "int_type":
        if isinstance(value, bool):
            return f"a boolean is not a number: give {field} as a whole number, e.g. {field}: 30"
        if isinstance(value, str):
            return f"give {field} as a number without quotes, e.g. {field}: {value.strip() or 30}"
        return f"give {field} as a whole number"
    if kind == "string_type":
        return f"give {field} as text; quote it if YAML reads it as something else, e.g. {field}: \"{value}\""
    if kind == "greater_than_equal":
        return f"use a value of at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"use a value of at most {ctx.get('le')}"
    if kind == "string_too_long":
        return f"use at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return "give a non-empty value"
    if kind == "string_pattern_mismatch":
        if field in ("nation", "code"):
            code = str(value).strip().upper()
            which = f": '{code}'" if code in nations() else " listed in src/embassy/nations.yaml"
            return f"use the uppercase ISO 3166-1 alpha-2 code{which}"
        if field == "region":
            return "use an AWS region name such as eu-central-1 (see src/embassy/nations.yaml)"
        if field == "instance_type":
            return "use an EC2 instance type, family.size, such as m5.xlarge or m6i.2xlarge"
        if field == "classification":
            return f"a tag value: letters, digits, spaces and _ . : / = + - @ only, at most {MAX_TAG_VALUE} characters"
        if field == "stack":
            return "a Pulumi stack name: letters, digits, '-', '_' and '.', at most 100 characters"
        if field == "name" and "state" not in loc:
            return "use lowercase letters, digits and '-' (at most 32 characters, not starting or ending with '-')"
        return "use printable characters only"
    if kind in ("tuple_type", "list_type"):
        return f"give {field} as a YAML list (`- item` lines or [a, b]); {README_HINT}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"give a mapping of keys (key: value lines); {README_HINT}"
    if kind == "enum":
        return f"use one of: {ctx.get('expected', 'the listed values')}"
    return f"fix the value; {README_HINT}"


def _key_path(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return NAMESPACE
    path = f"{NAMESPACE}:{loc[0]}"
    for part in loc[1:]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _from_validation_error(exc: ValidationError) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("int_type", "string_type") and "input" in err:
            message += f", not {type(err['input']).__name__} {err['input']!r}"[:200]
        if err["type"] == "string_pattern_mismatch":  # the hint says the form; the regex says little
            field = next((str(part) for part in reversed(loc) if isinstance(part, str)), "value")
            message = f"{repr(err.get('input'))[:80]} is not a valid {field.replace('_', ' ')}"
        issues.append(ConfigIssue(path=_key_path(loc), message=message, hint=_hint(err)))
    return issues


def _semantic_issues(dep: Deployment) -> list[ConfigIssue]:
    """The checks that span fields: placement, uniqueness, holders, priorities."""
    issues: list[ConfigIssue] = []
    catalog = nations()

    def add(path: str, message: str, hint: str) -> None:
        issues.append(ConfigIssue(path=f"{NAMESPACE}:{path}", message=message, hint=hint))

    if dep.state.code not in catalog:
        add("state.code", f"unknown nation '{dep.state.code}'", "use an ISO 3166-1 alpha-2 code from nations.yaml")

    if not dep.embassies:
        add("embassies", "no embassy declared", "declare at least one embassy (name, nation, region, retention_days)")
    if not dep.registers:
        add("registers", "no register declared", "declare at least one register (name, kind, priority, rpo/rto)")
    hosts = ", ".join(sorted(code for code, n in catalog.items() if n.all_regions))
    seen: dict[str, int] = {}
    for i, emb in enumerate(dep.embassies):
        if emb.name in seen:
            add(f"embassies[{i}].name", f"duplicate embassy name '{emb.name}' (also embassies[{seen[emb.name]}])",
                "give every embassy a unique short name")
        seen.setdefault(emb.name, i)
        nation = catalog.get(emb.nation)
        if nation is None:
            add(f"embassies[{i}].nation", f"unknown nation '{emb.nation}'",
                "use an ISO 3166-1 alpha-2 code listed in src/embassy/nations.yaml")
            continue
        if emb.nation == dep.state.code:
            add(f"embassies[{i}].nation", f"embassy '{emb.name}' is in the home state's own nation ({emb.nation})",
                f"an embassy must be hosted by another nation; choose a friendly host nation with an AWS region: {hosts}")
            continue
        if not nation.all_regions:
            add(f"embassies[{i}].nation", f"{nation.name} ({emb.nation}) has no AWS region: no embassy can be placed there",
                f"choose a host nation with an AWS region (src/embassy/nations.yaml): {hosts}")
            continue
        if nation.partition_of(emb.region) is None:
            where = region_nation(emb.region)
            located = f"located in {where.name} ({where.code})" if where else "not a known AWS region"
            add(f"embassies[{i}].region", f"region '{emb.region}' is {located}, not in {nation.name} ({emb.nation})",
                f"placement is law: use a region located in {emb.nation}: {', '.join(nation.all_regions)}")

    if not dep.principals.key_admins:
        add("principals.key_admins", "no key administrator of the home state",
            "name at least one IAM role of the home state that administers the embassy keys, "
            "e.g. arn:aws:iam::111122223333:role/embassy-key-admin")
    if not dep.principals.break_glass:
        add("principals.break_glass", "no break-glass principal",
            "name the IAM role(s) of the home state allowed to assume the break-glass role")
    names = {e.name for e in dep.embassies}
    seen_registers: dict[str, int] = {}
    seen_priorities: dict[int, int] = {}
    for i, reg in enumerate(dep.registers):
        if reg.name in seen_registers:
            add(f"registers[{i}].name", f"duplicate register name '{reg.name}' (also registers[{seen_registers[reg.name]}])",
                "give every register a unique name")
        seen_registers.setdefault(reg.name, i)
        if reg.priority in seen_priorities:
            other = dep.registers[seen_priorities[reg.priority]].name
            add(f"registers[{i}].priority", f"priority {reg.priority} is also held by register '{other}'",
                "give every register its own restore priority (1 is restored first)")
        seen_priorities.setdefault(reg.priority, i)
        for j, held_by in enumerate(reg.embassies or ()):
            if held_by not in names:
                add(f"registers[{i}].embassies[{j}]", f"unknown embassy '{held_by}'",
                    f"name one of the embassies: {', '.join(sorted(names))}")
            elif held_by in (reg.embassies or ())[:j]:
                add(f"registers[{i}].embassies[{j}]", f"embassy '{held_by}' is named twice",
                    "name each embassy once")
        holders = dep.holders(reg)
        able = [e for e in holders if dep.rpo_bound(reg, e) == reg.rpo_seconds]
        if not able:
            why = ("no embassy holds it" if not holders else
                   f"only cold embassies hold it and they cannot meet rpo_seconds={reg.rpo_seconds} "
                   f"(a cold embassy promises cold_rpo_seconds={dep.cold_rpo_seconds} at best)")
            add(f"registers[{i}]", f"register '{reg.name}' has no embassy able to hold it: {why}",
                "add a warm embassy to the register's embassies, or relax its rpo_seconds")
    return issues


# --------------------------------------------------------------------------- loading

ConfigGetter = Callable[[str], Any]
MAX_STACK_FILE_BYTES = 4 * 1024 * 1024
# Pulumi stack files' own top-level keys; a misspelled `config:` would leave every key unread.
STACK_FILE_KEYS = ("config", "secretsprovider", "encryptedkey", "encryptionsalt", "environment")
CONFIG_KEYS = ("state", "embassies", "registers", "principals", "classification", "cold_rpo_seconds",
               "restore_tests", "manifest_public_key", "debian_release")
# Secret config the program reads (`pulumi config set --secret`); never part of the model.
SECRET_CONFIG_KEYS = ("break_glass_external_id",)


def _unknown_keys(values: Mapping[str, Any]) -> list[ConfigIssue]:
    known = (*CONFIG_KEYS, *SECRET_CONFIG_KEYS)
    issues = []
    for key in sorted(set(values) - set(known)):
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{NAMESPACE}:{near[0]}'?" if near else f"remove it; the keys are {', '.join(known)}"
        issues.append(ConfigIssue(path=f"{NAMESPACE}:{key}", message="unknown key: the model would ignore it",
                                  hint=f"{hint} ({README_HINT})"))
    return issues


def _from_values(stack: str, values: Mapping[str, Any], source: str) -> Deployment:
    """Build and validate the model from the namespace's config values (keys without namespace)."""
    raw = {"stack": stack, **{k: values[k] for k in CONFIG_KEYS if values.get(k) is not None}}
    issues = _unknown_keys(values)
    try:
        dep = Deployment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigInvalid(source, issues + _from_validation_error(exc)) from None
    issues += _semantic_issues(dep)
    if issues:
        raise ConfigInvalid(source, issues)
    return dep


# Plain strings: a JSON parse would turn "10" into 10 and "null" into nothing.
TEXT_KEYS = ("classification", "manifest_public_key")


def from_pulumi_config(stack: str, get_object: ConfigGetter, get_text: ConfigGetter | None = None) -> Deployment:
    """Build the model inside a Pulumi program.

    `get_object(key)` returns the parsed value of `data-embassy:<key>`: structured values parsed from
    JSON, plain strings as they are (see stacks/__main__.py). `get_text(key)` (pulumi.Config.get), when
    given, reads the TEXT_KEYS as the stack file wrote them."""
    values = {k: (get_text if get_text is not None and k in TEXT_KEYS else get_object)(k) for k in CONFIG_KEYS}
    return _from_values(stack, values, source=f"stack '{stack}'")


def check_stack_name(stack: str) -> None:
    """Refuse a stack name Pulumi would refuse, before it is used in a path."""
    if not isinstance(stack, str) or not STACK_NAME.match(stack):
        shown = repr(stack)[:120]
        raise _invalid(f"stack {shown}", "stack", f"{shown} is not a Pulumi stack name",
                       "a stack name has 1 to 100 letters, digits, '-', '_' or '.', e.g. --stack rehearsal")


def stack_file(stack: str, root: Path | None = None) -> Path:
    check_stack_name(stack)
    return (root or project_root()) / f"Pulumi.{stack}.yaml"


def _kind_of(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def _yaml_duplicates(node: yaml.Node) -> list[ConfigIssue]:
    """Keys given twice in one mapping (YAML keeps the last one silently), each named by its key path."""
    issues = []
    todo: list[tuple[yaml.Node, str]] = [(node, "")]
    visited: set[int] = set()
    while todo:
        current, where = todo.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in current.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                path = f"{where}.{key.value}" if where else key.value
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    shown = path.removeprefix("config.") if path.startswith(f"config.{NAMESPACE}:") else path
                    issues.append(ConfigIssue(path=shown, message=f"duplicate key '{key.value}' at line {line} "
                                              f"(first at line {first[(key.tag, key.value)]}): YAML would keep the last",
                                              hint="give each key once; remove or merge the other"))
                first.setdefault((key.tag, key.value), line)
                todo.append((value, path))
        elif isinstance(current, yaml.SequenceNode):
            todo.extend((item, f"{where}[{i}]") for i, item in enumerate(current.value))
    return issues


def _parse_yaml(text: str, source: str, name: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicates = _yaml_duplicates(node)
        if duplicates:
            raise ConfigInvalid(source, duplicates)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _invalid(source, name, f"not valid YAML: {what}{where}", "fix the YAML syntax of the stack file") from None
    except RecursionError:
        raise _invalid(source, name, "nested too deeply to be a stack config",
                       f"a stack file is a mapping with a `config:` key; {README_HINT}") from None
    finally:
        loader.dispose()


def read_stack_values(path: Path) -> dict[str, Any]:
    """The `data-embassy:` values of a Pulumi.<stack>.yaml, keyed without the namespace.

    Refused (ConfigInvalid, naming the file or key): unreadable, binary or non-UTF-8 files, YAML that is
    not a mapping, duplicated keys, and keys of a misspelled or missing namespace."""
    source, name = str(path), path.name
    try:
        if path.stat().st_size > MAX_STACK_FILE_BYTES:
            raise _invalid(source, name, f"is {path.stat().st_size} bytes, more than a stack config needs "
                           f"({MAX_STACK_FILE_BYTES} bytes)", "check that --stack names the stack file you meant")
        data = path.read_bytes()
    except OSError as exc:
        raise _invalid(source, name, f"cannot read {path}: {exc.strerror or exc}",
                       "check that the stack file exists and is readable by this user") from None
    if b"\x00" in data:
        raise _invalid(source, name, "is a binary file, not YAML text",
                       f"a stack file is YAML text with a `config:` mapping; {README_HINT}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid(source, name, f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                       "save the stack file as UTF-8 (YAML text)") from None
    doc = _parse_yaml(text, source, name)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise _invalid(source, name, f"is {_kind_of(doc)}, not a mapping with a `config:` key",
                       f"a stack file looks like `config:` then `  {NAMESPACE}:embassies: …`; {README_HINT}")
    for key in doc:
        near = difflib.get_close_matches(str(key), STACK_FILE_KEYS, n=1, cutoff=0.75)
        if key not in STACK_FILE_KEYS and near:
            raise _invalid(source, str(key), f"unknown top-level key '{key}'", f"did you mean '{near[0]}'?")
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise _invalid(source, "config", f"'config' is {_kind_of(config)}, not a mapping",
                       f"write `config:` then one `{NAMESPACE}:<key>: value` per line; {README_HINT}")
    prefix = f"{NAMESPACE}:"
    issues = []
    for key in config:
        if not isinstance(key, str) or key.startswith(prefix):
            continue
        namespace, colon, rest = key.partition(":")
        if not colon and key in CONFIG_KEYS:
            issues.append(ConfigIssue(path=f"config.{key}", message=f"key '{key}' has no namespace",
                                      hint=f"write it as {prefix}{key}"))
        elif colon and namespace != NAMESPACE and difflib.get_close_matches(namespace, [NAMESPACE], cutoff=0.75):
            issues.append(ConfigIssue(path=f"config.{key}", message=f"unknown namespace '{namespace}'",
                                      hint=f"the namespace is {NAMESPACE}: write {prefix}{rest}"))
    if issues:
        raise ConfigInvalid(source, issues)
    return {k.removeprefix(prefix): v for k, v in config.items() if isinstance(k, str) and k.startswith(prefix)}


def load_stack(stack: str, root: Path | None = None) -> Deployment:
    """Read Pulumi.<stack>.yaml and return the validated model, or raise ConfigInvalid."""
    path = stack_file(stack, root)
    if not path.is_file():
        raise _invalid(str(path), str(path.name), f"no stack file {path}",
                       f"create it with `pulumi stack init {stack}` and `pulumi config set`, or pick an existing stack")
    return _from_values(stack, read_stack_values(path), source=str(path))


def project_root() -> Path:
    """The project folder: the nearest parent of the working directory holding Pulumi.yaml."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    return here


def to_config_json(values: Mapping[str, Any]) -> dict[str, str]:
    """Values as the Pulumi engine passes them to a program: `ns:key` -> JSON (strings stay raw)."""
    return {f"{NAMESPACE}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}

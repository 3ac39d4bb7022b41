"""The typed model of a data-embassy stack, read once from the stack config and validated.

Everything else (the Pulumi program, the lab, the inventories, the agents, the drill) takes the
model from here; nothing re-parses the stack YAML on its own.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

NAMESPACE = "data-embassy"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
IAM_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")
# A cold embassy only gets archived WAL (archive_timeout); it cannot meet a tighter RPO.
COLD_MIN_RPO_SECONDS = 60


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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HomeState(_Strict):
    name: str = Field(min_length=1)
    code: str = Field(pattern=r"^[A-Z]{2}$")


class Embassy(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    nation: str = Field(pattern=r"^[A-Z]{2}$")
    region: str = Field(min_length=1)
    retention_days: int = Field(ge=1)
    admin_cidrs: tuple[str, ...] = ()
    mode: Mode = Mode.WARM
    instance_type: str = "m5.xlarge"  # Nitro Enclaves capable, 4 vCPU / 16 GiB
    host_count: int = Field(default=1, ge=1, le=8)
    volume_size_gb: int = Field(default=50, ge=20, le=16384)

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs_are_closed(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"invalid CIDR '{cidr}': {exc}") from None
            if net.prefixlen == 0:
                raise ValueError(f"CIDR '{cidr}' opens the enclave to the whole internet")
        return cidrs

    @property
    def partition(self) -> str:
        nation = nations().get(self.nation)
        return (nation.partition_of(self.region) if nation else None) or "aws"


class Register(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    kind: RegisterKind
    priority: int = Field(ge=1)
    rpo_seconds: int = Field(ge=1)
    rto_seconds: int = Field(ge=1)
    # Which embassies hold a replica; default: every embassy.
    embassies: tuple[str, ...] | None = None


class Principals(_Strict):
    """IAM principals of the home state: the only ones allowed to administer the embassy keys."""

    key_admins: tuple[str, ...] = ()
    break_glass: tuple[str, ...] = ()
    # Who may assume the agent (write) and restore (read) roles; empty: the key administrators.
    agents: tuple[str, ...] = ()
    restorers: tuple[str, ...] = ()

    @field_validator("key_admins", "break_glass", "agents", "restorers")
    @classmethod
    def _are_iam_arns(cls, arns: tuple[str, ...]) -> tuple[str, ...]:
        for arn in arns:
            if not IAM_ARN.match(arn):
                raise ValueError(f"'{arn}' is not an IAM role or user ARN")
        return arns


class Deployment(_Strict):
    """One stack: the home state, its embassies and the registers they hold."""

    stack: str
    state: HomeState
    embassies: tuple[Embassy, ...]
    registers: tuple[Register, ...]
    principals: Principals = Principals()
    classification: str = "restricted"

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


# --------------------------------------------------------------------------- errors


class ConfigIssue(BaseModel):
    """One problem in a stack config, with the key path that holds it and what to do."""

    path: str
    message: str
    hint: str

    def render(self) -> str:
        return f"error: {self.path}: {self.message}\nHINT: {self.hint}"


class ConfigInvalid(Exception):
    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(f"{source}: {len(issues)} error(s)\n" + "\n".join(i.render() for i in issues))


_HINTS: dict[str, str] = {
    "missing": "add the key; see README.md, 'Stack configuration'",
    "extra_forbidden": "remove the key or fix its spelling; see README.md, 'Stack configuration'",
    "string_pattern_mismatch": "use lowercase letters, digits and '-' (names) or an ISO 3166-1 alpha-2 code",
    "greater_than_equal": "use a value of at least 1",
    "enum": "use one of the listed values",
}


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
        hint = _HINTS.get(err["type"], "fix the value; see README.md, 'Stack configuration'")
        if "IAM role or user ARN" in message:
            hint = "give full ARNs such as arn:aws:iam::111122223333:role/embassy-key-admin"
        if "CIDR" in message:
            hint = "give the admin network as a CIDR such as 203.0.113.0/28, never 0.0.0.0/0 or ::/0"
        issues.append(ConfigIssue(path=_key_path(loc), message=message, hint=hint))
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
                "an embassy must be hosted by another nation; choose a friendly host nation")
        if nation.partition_of(emb.region) is None:
            where = region_nation(emb.region)
            located = f"located in {where.name} ({where.code})" if where else "not a known AWS region"
            choices = ", ".join(nation.all_regions) or "none: this nation has no AWS region"
            add(f"embassies[{i}].region", f"region '{emb.region}' is {located}, not in {nation.name} ({emb.nation})",
                f"placement is law: use a region located in {emb.nation}: {choices}")

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
        holders = dep.holders(reg)
        able = [e for e in holders if e.mode is Mode.WARM or reg.rpo_seconds >= COLD_MIN_RPO_SECONDS]
        if not able:
            why = ("no embassy holds it" if not holders else
                   f"only cold embassies hold it and they cannot meet rpo_seconds={reg.rpo_seconds} "
                   f"(a cold embassy needs rpo_seconds >= {COLD_MIN_RPO_SECONDS})")
            add(f"registers[{i}]", f"register '{reg.name}' has no embassy able to hold it: {why}",
                "add a warm embassy to the register's embassies, or relax its rpo_seconds")
    return issues


# --------------------------------------------------------------------------- loading

ConfigGetter = Callable[[str], Any]


def _from_values(stack: str, values: Mapping[str, Any], source: str) -> Deployment:
    """Build and validate the model from the namespace's config values (keys without namespace)."""
    raw = {
        "stack": stack,
        "state": values.get("state"),
        "embassies": values.get("embassies"),
        "registers": values.get("registers"),
    }
    for optional in ("principals", "classification"):
        if values.get(optional) is not None:
            raw[optional] = values[optional]
    raw = {k: v for k, v in raw.items() if v is not None}
    try:
        dep = Deployment.model_validate(raw)
    except ValidationError as exc:
        raise ConfigInvalid(source, _from_validation_error(exc)) from None
    issues = _semantic_issues(dep)
    if issues:
        raise ConfigInvalid(source, issues)
    return dep


CONFIG_KEYS = ("state", "embassies", "registers", "principals", "classification")


def from_pulumi_config(stack: str, get_object: ConfigGetter) -> Deployment:
    """Build the model inside a Pulumi program.

    `get_object(key)` returns the parsed value of `data-embassy:<key>`: structured values parsed from
    JSON, plain strings as they are (see stacks/__main__.py)."""
    return _from_values(stack, {k: get_object(k) for k in CONFIG_KEYS}, source=f"stack '{stack}'")


def stack_file(stack: str, root: Path | None = None) -> Path:
    return (root or project_root()) / f"Pulumi.{stack}.yaml"


def read_stack_values(path: Path) -> dict[str, Any]:
    """The `data-embassy:` values of a Pulumi.<stack>.yaml, keyed without the namespace."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigInvalid(str(path), [ConfigIssue(path=NAMESPACE, message=f"not valid YAML: {exc}",
                                                    hint="fix the YAML syntax of the stack file")]) from None
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigInvalid(str(path), [ConfigIssue(path="config", message="'config' is not a mapping",
                                                    hint="see README.md, 'Stack configuration'")])
    prefix = f"{NAMESPACE}:"
    return {k.removeprefix(prefix): v for k, v in config.items() if k.startswith(prefix)}


def load_stack(stack: str, root: Path | None = None) -> Deployment:
    """Read Pulumi.<stack>.yaml and return the validated model, or raise ConfigInvalid."""
    path = stack_file(stack, root)
    if not path.is_file():
        raise ConfigInvalid(str(path), [ConfigIssue(
            path=str(path.name), message=f"no stack file {path}",
            hint=f"create it with `pulumi stack init {stack}` and `pulumi config set`, or pick an existing stack")])
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



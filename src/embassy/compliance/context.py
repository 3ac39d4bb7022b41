"""The resource set a control looks at: resources, their providers, and which embassy each belongs to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from embassy.compliance.props import SECRET, SECRET_SIG, SIG_KEY, UNKNOWN, is_unknown
from embassy.model import Deployment

TAG_NAMESPACE = "data-embassy:"


def _tag_key(key: Any) -> str:
    return str(key).lower().removeprefix(TAG_NAMESPACE)


def _default_tags(value: Any) -> dict[str, str]:
    """A provider's defaultTags.tags; providers receive their inputs JSON-encoded, so it may be a string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    if isinstance(value, Mapping) and isinstance(value.get("tags"), Mapping):
        return {_tag_key(k): str(v) for k, v in value["tags"].items()}
    return {}


def provider_urn(reference: str | None) -> str | None:
    """A provider reference is `<provider urn>::<provider id>`; keep the URN."""
    if not reference:
        return None
    if reference.count("::") > 3:
        return reference.rsplit("::", 1)[0]
    return reference


def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def urn_type(urn: str) -> str:
    parts = urn.split("::")
    return parts[2].rsplit("$", 1)[-1] if len(parts) >= 4 else ""


class SecretValue(str):
    """A value Pulumi stores as a secret: prints as "[secret]", equal to another when the stored secret is equal.

    Two exports of the same state hold the same ciphertext; a plaintext is compared by its digest and never kept.
    A redacted "[secret]" (a plan) equals any secret: nothing more can be known.
    """

    digest: str

    def __new__(cls, digest: str) -> SecretValue:
        obj = super().__new__(cls, SECRET)
        obj.digest = digest
        return obj

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretValue):
            return self.digest == other.digest
        return other == SECRET

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(SECRET)


def unwrap_secrets(value: Any) -> Any:
    """Secret envelopes (`{SIG_KEY: SECRET_SIG, ciphertext | plaintext}`) as SecretValue; the rest as is."""
    if isinstance(value, Mapping):
        if value.get(SIG_KEY) == SECRET_SIG:
            stored = value.get("ciphertext", value.get("plaintext", value.get("value")))
            text = stored if isinstance(stored, str) else json.dumps(stored, sort_keys=True)
            return SecretValue(hashlib.sha256(text.encode()).hexdigest())
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


def _props(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        return {}
    return {k: unwrap_secrets(v) for k, v in value.items() if k != "__defaults"}


@dataclass(frozen=True)
class Resource:
    """One resource as the engine sees it: camelCase properties, references by URN.

    `inputs` is what the checks judge: what was applied (the record's outputs) over what was asked (its
    inputs), when the record says what was applied; `declared` is the inputs alone, what a diff compares.
    """

    urn: str
    type: str
    inputs: Mapping[str, Any]
    name: str = ""
    parent: str | None = None
    provider: str | None = None  # provider URN (the `::id` suffix dropped)
    dependencies: tuple[str, ...] = ()
    protect: bool | None = None  # protect or retainOnDelete; None only where nothing can say (a bare URN)
    provider_region: str | None = None  # the plan records its provider's region beside the reference
    custom: bool = True  # False for a component (`custom: false`): not a cloud resource
    declared: Mapping[str, Any] | None = None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], applied: bool = True, provider_hint: str | None = None) -> Resource:
        """From a plan, export, checkpoint, preview-step or engine-event record (all share these keys).

        Pulumi writes `protect` and `retainOnDelete` only when true: absent is false. With `applied`, the
        record's outputs (what the provider applied) win over its inputs.
        """
        urn = str(rec.get("urn", ""))
        declared = _props(rec.get("inputs"))
        if not declared and isinstance(rec.get("defaults"), Mapping):  # checkpoint v0
            declared = _props(rec.get("defaults"))
        outputs = _props(rec.get("outputs")) if applied else {}
        merged = {**declared, **{k: v for k, v in outputs.items() if v is not None}}
        protect = any(rec.get(k) is True for k in ("protect", "retainOnDelete"))
        prov = rec.get("provider")
        prov_region = None
        if isinstance(prov, Mapping):  # the plan's {"urn", "region"}
            prov_region = prov.get("region") if isinstance(prov.get("region"), str) else None
            prov = prov.get("urn")
        if not prov and provider_hint:  # older event logs carry it only in the step metadata
            prov = provider_hint
        return cls(
            urn=urn,
            type=str(rec.get("type") or urn_type(urn)),
            inputs=merged,
            name=str(rec.get("name") or urn_name(urn)),
            parent=rec.get("parent") or None,
            provider=provider_urn(prov if isinstance(prov, str) and prov else None),
            dependencies=tuple(str(d) for d in deps) if isinstance(deps := rec.get("dependencies"), list) else (),
            protect=protect,
            provider_region=prov_region,
            custom=rec.get("custom") is not False,
            declared=declared,
        )

    @classmethod
    def of_urn(cls, urn: str) -> Resource:
        """All that a step without state says: the type and name are in the URN."""
        return cls(urn=urn, type=urn_type(urn), inputs={}, name=urn_name(urn))

    @property
    def asked(self) -> Mapping[str, Any]:
        """The declared inputs (what a diff compares)."""
        return self.inputs if self.declared is None else self.declared

    @property
    def is_provider(self) -> bool:
        return self.type.startswith("pulumi:providers:")


@dataclass
class Context:
    """Everything a check may consult besides the resource itself."""

    resources: dict[str, Resource] = field(default_factory=dict)
    model: Deployment | None = None
    complete: bool = True  # False in a CrossGuard resource policy: only the resource and its provider are known
    default_region: str | None = None  # `aws:region` of the stack config, where the input carries it
    # Filled on first use (the resource set is never changed once a context holds it).
    _provider_tags_cache: dict[str, dict[str, str]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _referrer_cache: dict[tuple[tuple[str, ...], str], tuple[list[Resource], dict[str, list[int]], dict[str, list[int]]]] \
        = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, resources: Iterable[Resource], deployment: Deployment | None = None,
           complete: bool = True, default_region: str | None = None) -> Context:
        return cls({r.urn: r for r in resources}, deployment, complete, default_region)

    # Indexes built on first use: the checks ask "resources of type T" and "who refers to this bucket" once per
    # resource, and a scan of every resource each time made a review grow with the square of the stack.
    @cached_property
    def _types(self) -> dict[str, list[tuple[int, Resource]]]:
        index: dict[str, list[tuple[int, Resource]]] = {}
        for pos, r in enumerate(self.resources.values()):
            index.setdefault(r.type, []).append((pos, r))
        return index

    def by_type(self, *types: str) -> list[Resource]:
        """Resources of these types, in the order of the resource set."""
        found = [hit for t in dict.fromkeys(types) for hit in self._types.get(t, ())]
        if len(types) > 1:
            found.sort(key=lambda hit: hit[0])
        return [r for _, r in found]

    def provider_of(self, res: Resource) -> Resource | None:
        return self.resources.get(res.provider) if res.provider else None

    def region_of(self, res: Resource) -> str | None:
        """The region a resource lives in: its own `region` input (pulumi-aws 7) or its provider's."""
        own = res.inputs.get("region")
        if own:
            return UNKNOWN if is_unknown(own) else str(own)
        prov = res if res.is_provider else self.provider_of(res)
        if prov is not None and prov.inputs.get("region"):
            value = prov.inputs["region"]
            return UNKNOWN if is_unknown(value) else str(value)
        if res.provider_region:
            return res.provider_region
        on_default = not res.provider or urn_name(res.provider).startswith("default")
        return self.default_region if on_default and res.type.startswith(("aws:", "pulumi:providers:aws")) else None

    def role_of(self, res: Resource) -> str:
        """What the components say a resource is (`data-embassy:role` tag): vault, audit-log, agent, ...; "" if untagged.

        The resource's own tag only: a provider's defaultTags would name every resource of the embassy at once.
        """
        own = res.inputs.get("tags")
        if not isinstance(own, Mapping):
            return ""
        roles = [str(v) for k, v in own.items() if _tag_key(k) == "role"]
        return roles[-1].strip().lower() if roles else ""

    def tags_of(self, res: Resource) -> dict[str, str]:
        """The resource's tags merged over its provider's defaultTags (what AWS ends up with).

        Keys are lowercased and lose the `data-embassy:` namespace: `data-embassy:nation` reads as `nation`.
        """
        tags: dict[str, str] = {}
        prov = res if res.is_provider else self.provider_of(res)
        if prov is not None:
            tags.update(self._provider_tags(prov))
        src = res.inputs.get("tags") if not res.is_provider else None
        if isinstance(src, Mapping):
            tags.update({_tag_key(k): str(v) for k, v in src.items()})
        return tags

    def _provider_tags(self, prov: Resource) -> dict[str, str]:
        """A provider's defaultTags, parsed once per provider (every resource on it asks)."""
        cache = self._provider_tags_cache
        if prov.urn not in cache:
            cache[prov.urn] = _default_tags(prov.inputs.get("defaultTags"))
        return cache[prov.urn]

    @cached_property
    def _stack_role_names(self) -> frozenset[str]:
        names = set()
        for r in self.resources.values():
            if r.type == "aws:iam/role:Role" and isinstance(r.inputs.get("name"), str):
                names.add(r.inputs["name"])
            elif r.type.startswith("aws:iam/") and isinstance(r.inputs.get("role"), str):
                names.add(r.inputs["role"])
        return frozenset(names)

    def stack_role_names(self) -> set[str]:
        """Physical names of the IAM roles this stack creates (as the policies attached to them name them)."""
        return set(self._stack_role_names)

    def _ancestors(self, res: Resource) -> list[Resource | str]:
        chain: list[Resource | str] = []
        parent = res.parent
        seen = set()
        while parent and parent not in seen:
            seen.add(parent)
            rec = self.resources.get(parent)
            chain.append(rec if rec is not None else parent)
            parent = rec.parent if rec is not None else None
        return chain

    def embassy_of(self, res: Resource) -> str | None:
        """Which embassy a resource belongs to: its tags, an `Embassy` component ancestor, or its provider's name."""
        tags = self.tags_of(res)
        if tags.get("embassy"):
            return tags["embassy"]
        names = {e.name for e in self.model.embassies} if self.model else set()
        for anc in self._ancestors(res):
            urn = anc.urn if isinstance(anc, Resource) else anc
            if urn_type(urn).lower().endswith(":embassy"):
                return urn_name(urn)
        prov = res if res.is_provider else self.provider_of(res)
        candidates = [prov.name] if prov is not None else []
        if res.provider and prov is None:
            candidates.append(urn_name(res.provider))
        candidates.append(res.name)
        for cand in candidates:
            for name in sorted(names, key=len, reverse=True):
                if cand == name or cand.startswith(f"{name}-") or cand.endswith(f"-{name}") or f"-{name}-" in cand:
                    return name
        return None

    def nation_of(self, res: Resource) -> str | None:
        """The host nation of the resource's embassy: from the model, else from its `nation` tag."""
        emb = self.embassy_of(res)
        if emb and self.model:
            try:
                return self.model.embassy(emb).nation
            except KeyError:
                pass
        nation = self.tags_of(res).get("nation")
        return nation.upper() if nation else None

    def retention_days_of(self, res: Resource) -> int | None:
        emb = self.embassy_of(res)
        if emb and self.model:
            try:
                return self.model.embassy(emb).retention_days
            except KeyError:
                return None
        return None

    def referrers(self, target: Resource, *types: str, prop: str = "bucket") -> list[Resource]:
        """Resources of `types` that point at `target`: by dependency, or by naming it in `prop`."""
        idents = {target.urn, target.name}
        for key in ("bucket", "id", "arn", "name"):
            value = target.inputs.get(key)
            if isinstance(value, str) and value:
                idents.add(value)
        candidates, by_value, by_dependency = self._referrer_index(types, prop)
        hits = set(by_dependency.get(target.urn, ()))
        for ident in idents:
            hits.update(by_value.get(ident, ()))
        return [candidates[i] for i in sorted(hits)]

    def _referrer_index(self, types: tuple[str, ...], prop: str) -> tuple[
            list[Resource], dict[str, list[int]], dict[str, list[int]]]:
        """Resources of `types`, and their positions by the string in `prop` and by each dependency."""
        cache = self._referrer_cache
        key = (types, prop)
        if key not in cache:
            candidates = self.by_type(*types)
            by_value: dict[str, list[int]] = {}
            by_dependency: dict[str, list[int]] = {}
            for i, r in enumerate(candidates):
                value = r.inputs.get(prop)
                if isinstance(value, str):
                    by_value.setdefault(value, []).append(i)
                for dep in dict.fromkeys(r.dependencies):
                    by_dependency.setdefault(dep, []).append(i)
            cache[key] = (candidates, by_value, by_dependency)
        return cache[key]

    @cached_property
    def home_accounts(self) -> frozenset[str]:
        """AWS accounts of the home state: those of the model's key admins and break-glass principals."""
        accounts = set()
        if self.model:
            p = self.model.principals
            for arn in (*p.key_admins, *p.break_glass, *getattr(p, "agents", ()), *getattr(p, "restorers", ())):
                parts = arn.split(":")
                if len(parts) > 4 and parts[4]:
                    accounts.add(parts[4])
        return frozenset(accounts)

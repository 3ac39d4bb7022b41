"""Reading engine property bags (camelCase inputs) safely: unknowns, secrets and CrossGuard proxies.

Preview-time values can be unknown (the engine's sentinels). A check reads a value either as
`need` (the value decides the control: unknown raises `Unknown`) or as `ref` (a reference to another
resource's output, such as a key ARN: unknown is expected at preview and is returned as UNKNOWN).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

# The engine's unknown sentinels (pulumi_policy/proxy.py and sdk/go/common/resource/plugin/rpc.go).
UNKNOWN_SENTINELS = frozenset({
    "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # boolean
    "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # number
    "04da6b54-80e4-46f7-96ec-b56ff0331ba9",  # string (also what `preview --json` prints)
    "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # array
    "030794c1-ac77-496b-92df-f27374a8bd58",  # asset
    "e48ece36-62e2-4504-bad9-02848725956a",  # archive
    "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # object
})
UNKNOWN = "<unknown>"  # what `ref` returns for a value not known yet
SECRET = "[secret]"
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


class Unknown(Exception):
    """A value a control needs is not known (a preview of a value computed from another resource)."""

    def __init__(self, path: str, kind: str = "decision") -> None:
        super().__init__(f"{path} is unknown at preview")
        self.path = path
        # decision: a setting the control judges (must be known); reference: a document or ARN built
        # from other resources' outputs (known only once they exist).
        self.kind = kind


def is_unknown(value: Any) -> bool:
    return isinstance(value, str) and value in UNKNOWN_SENTINELS


def plain(value: Any) -> Any:
    """A deep copy as plain dicts/lists: unwraps CrossGuard proxies, turns secret envelopes into "[secret]"."""
    if isinstance(value, Mapping):
        target = _proxy_target(value)
        if target is not None:
            value = target
        if SIG_KEY in value:
            sig = value[SIG_KEY]
            if sig == SECRET_SIG:
                inner = value.get("value", SECRET) if "ciphertext" not in value else SECRET
                return plain(inner) if inner != SECRET else SECRET
            return {k: plain(v) for k, v in value.items()}
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        target = _proxy_target(value)
        items = target if target is not None else value
        return [plain(v) for v in items]
    if hasattr(value, "value") and type(value).__name__ == "Secret":  # pulumi_policy.Secret
        return plain(value.value)
    return value


def _proxy_target(value: Any) -> Any:
    # pulumi_policy's proxies hand out their raw target for the key "__target" without checking unknowns.
    if type(value).__name__ in ("_DictProxy", "_ListProxy"):
        return value["__target"]
    return None


def _walk(props: Mapping[str, Any], path: str) -> tuple[Any, bool]:
    """The value at a dotted path (`a.b.0.c`) and whether it was unknown; (None, False) when absent."""
    cur: Any = props
    for part in path.split("."):
        if is_unknown(cur):
            return None, True
        if isinstance(cur, Mapping):
            if part not in cur:
                return None, False
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit():
            if int(part) >= len(cur):
                return None, False
            cur = cur[int(part)]
        else:
            return None, False
    return (None, True) if is_unknown(cur) else (cur, False)


def need(props: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """A value the control decides on: raises Unknown when it is not known."""
    value, unknown = _walk(props, path)
    if unknown:
        raise Unknown(path)
    return default if value is None else value


def ref(props: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """A reference to another resource's output: UNKNOWN when not known yet (expected at preview)."""
    value, unknown = _walk(props, path)
    if unknown:
        return UNKNOWN
    return default if value is None else value


def items(props: Mapping[str, Any], path: str) -> list[Any]:
    """A list value the control needs (each element may still hold unknowns)."""
    value = need(props, path, [])
    if isinstance(value, Mapping):  # a single nested block recorded as an object
        return [value]
    return list(value) if isinstance(value, list) else []


def truthy(value: Any) -> bool:
    """Engine booleans may arrive as bools or strings ("true")."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def policy_document(value: Any, path: str) -> dict[str, Any] | None:
    """An IAM/KMS/bucket policy given as a JSON string or an object; None when absent or a redacted secret."""
    if value in (None, "", SECRET):
        return None
    if is_unknown(value):
        raise Unknown(path, "reference")
    if isinstance(value, str):
        if any(s in value for s in UNKNOWN_SENTINELS):
            raise Unknown(path, "reference")
        try:
            doc = json.loads(value)
        except json.JSONDecodeError:
            return {"Statement": [], "_unparsable": value[:80]}
    else:
        doc = value
    return doc if isinstance(doc, dict) else None


def statements(doc: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not doc:
        return []
    st = doc.get("Statement", [])
    return [s for s in (st if isinstance(st, list) else [st]) if isinstance(s, dict)]


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]

"""The shape of resource records (plan, export, checkpoint, preview state, event state), checked before use.

A file of the wrong shape is bad input: the error names the file and the key path, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from embassy.errors import UserError

HINT = ("give a file as Pulumi or `embassy plan` writes it: each resource an object with a string `urn`, "
        "`inputs`/`outputs` objects and `dependencies` a list of URNs")
# key -> the JSON types it may have (None: absent or null always allowed)
_SHAPES: dict[str, tuple[type, ...]] = {
    "urn": (str,),
    "type": (str,),
    "inputs": (Mapping,),
    "outputs": (Mapping,),
    "defaults": (Mapping,),
    "dependencies": (list,),
    "parent": (str,),
    "provider": (str, Mapping),
    "custom": (bool,),
    "protect": (bool,),
    "retainOnDelete": (bool,),
}
_NAMES = {str: "a string", Mapping: "an object", list: "a list", bool: "a boolean"}


def kind_of(value: Any) -> str:
    """A JSON value's kind, as an error names it."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def check_records(rows: Any, where: str, label: str) -> list[Mapping[str, Any]]:
    """The records of `rows` (a list of resource objects), or UserError naming `label` and the key path."""
    if rows is None:
        return []
    if not isinstance(rows, list):
        raise UserError(f"{label}: {where} is {kind_of(rows)}, not a list of resources", HINT)
    for i, rec in enumerate(rows):
        at = f"{where}[{i}]" if where.endswith("resources") else where
        if not isinstance(rec, Mapping):
            raise UserError(f"{label}: {at} is {kind_of(rec)}, not a resource object", HINT)
        if not isinstance(rec.get("urn"), str) or not rec["urn"]:
            raise UserError(f"{label}: {at}.urn is missing or not a string", HINT)
        for key, types in _SHAPES.items():
            value = rec.get(key)
            if value is not None and not isinstance(value, types):
                want = " or ".join(_NAMES[t] for t in types)
                raise UserError(f"{label}: {at}.{key} is {kind_of(value)}, not {want}", HINT)
        deps = rec.get("dependencies") or []
        bad = next((j for j, d in enumerate(deps) if not isinstance(d, str)), None)
        if bad is not None:
            raise UserError(f"{label}: {at}.dependencies[{bad}] is {kind_of(deps[bad])}, not a URN", HINT)
    return rows

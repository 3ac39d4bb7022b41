"""Generated stacks of N embassies, written as real `Pulumi.<stack>.yaml` files in a project folder of their own.

Each embassy sits in a nation of its own, in that nation's first region of the commercial `aws` partition
(the nations catalog), so that a stack of 20 is 20 providers in 20 regions as a real federation would be.
The folder holds a copy of Pulumi.yaml and links to this checkout's stacks/ and src/: `embassy plan` run
there plans the generated stack through the project's own program.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from embassy import model

from .conftest import ROOT

HOME = {"name": "Estonia", "code": "EE"}
# The rehearsal's hosts first, then every other nation with a commercial region, in catalog order.
FIRST_HOSTS = ("DE", "SE", "IE")
REGISTERS = [
    {"name": "population", "kind": "postgres", "priority": 1, "rpo_seconds": 5, "rto_seconds": 300},
    {"name": "land-register", "kind": "postgres", "priority": 2, "rpo_seconds": 60, "rto_seconds": 600},
    {"name": "court-files", "kind": "files", "priority": 3, "rpo_seconds": 300, "rto_seconds": 900},
]
PRINCIPALS = {"key_admins": ["arn:aws:iam::111122223333:role/ee-embassy-key-admin"],
              "break_glass": ["arn:aws:iam::111122223333:role/ee-embassy-break-glass-officer"]}


def hosts() -> list[tuple[str, str]]:
    """(nation, region) of every possible host, one per nation."""
    catalog = model.nations()
    codes = [*FIRST_HOSTS, *(c for c in catalog if c not in FIRST_HOSTS)]
    return [(c, catalog[c].regions["aws"][0]) for c in codes if catalog[c].regions.get("aws") and c != HOME["code"]]


def stack_config(count: int) -> dict[str, object]:
    """A stack of `count` embassies: warm and cold alternating, the first warm (the registers need one)."""
    places = hosts()
    if count > len(places):
        raise ValueError(f"the nations catalog has {len(places)} hosts, not {count}")
    embassies = [{"name": nation.lower(), "nation": nation, "region": region, "retention_days": 3650,
                  "mode": "warm" if i % 2 == 0 else "cold"} for i, (nation, region) in enumerate(places[:count])]
    ns = model.NAMESPACE
    return {"config": {"aws:region": embassies[0]["region"], f"{ns}:state": HOME, f"{ns}:principals": PRINCIPALS,
                       f"{ns}:embassies": embassies, f"{ns}:registers": REGISTERS}}


def project(folder: Path, counts: list[int]) -> dict[int, str]:
    """A project folder holding one generated stack per count; returns count -> stack name."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
    for part in ("stacks", "src"):
        link = folder / part
        if not link.exists():
            link.symlink_to(ROOT / part, target_is_directory=True)
    names = {}
    for count in counts:
        name = f"scale-{count}"
        (folder / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(stack_config(count), sort_keys=False))
        model.load_stack(name, folder)  # a generated stack is a valid one, or the benchmark means nothing
        names[count] = name
    return names

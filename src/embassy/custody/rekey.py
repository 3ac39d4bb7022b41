"""`embassy custody rotate`'s re-key: new backups get new passphrases, in a new key generation per embassy.

pgBackRest cannot change a repo's cipher passphrase and `restic key add` only rewraps the same master
key, so a re-key is a new pgBackRest repo path and new restic repositories in each embassy's vault,
with new secrets; the older generation stays readable with its own until its backups leave retention.

1. a replication round closes the current generation: the WAL segment it switches to is archived in
   every embassy's repo (a point-in-time restore to before the rotation finds its WAL there) and a
   manifest names that generation's newest backup;
2. each embassy's next generation is recorded on the controller (its secrets made first);
3. the agents' deploys (deploy.AGENTS; the home state holds no key, it is not re-deployed): home's pgBackRest
   config names the new paths (stanza-create there, a full backup), new restic repositories with a first
   snapshot; the embassies' config for the new generation;
4. a round in the new generation: every manifest names the new repositories.
The caller then issues the bundle, whose history holds every generation's secrets. A rotation that
stopped after step 2 is recorded as pending and resumed by the next `rotate` (never re-keyed twice).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embassy import model
from embassy.custody.bundle import holds_kind
from embassy.errors import UserError
from embassy.replication import dataplane, replicate, secrets
from embassy.replication.privatefile import create_private
from embassy.targets import Target

PENDING = "rotation-pending.json"  # in the secrets folder: {embassy: generation} not yet sealed in a bundle
Say = Callable[[str], None]


def pending(folder: Path) -> dict[str, int] | None:
    path = folder / PENDING
    try:
        got = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise UserError(f"{path} is not JSON", "restore it ({\"<embassy>\": <generation>, …}) or remove it after "
                        "checking `generation-<embassy>` in the same folder") from None
    return {str(k): int(v) for k, v in got.items()}


def finish(folder: Path) -> None:
    """The bundle holding the new generation is stored: the rotation is complete."""
    (folder / PENDING).unlink(missing_ok=True)


def round_problems(report: dict[str, Any], generations: dict[str, int] | None = None) -> list[str]:
    """What keeps a round from closing (or opening) a key generation: an embassy without a manifest, a WAL
    segment not archived there, or (after the switch) a manifest naming another generation's repositories."""
    problems = []
    for e in report.get("embassies", []):
        if not e.get("manifest") or e.get("errors") or e.get("notes"):
            problems.append(f"{e['name']}: {'; '.join(e.get('errors', []) + e.get('notes', [])) or 'no manifest'}")
        elif generations is not None:
            got = dataplane.manifest_generation({"registers": e.get("registers", [])})
            if got != generations.get(e["name"]):
                problems.append(f"{e['name']}: round {report.get('round')} names key generation {got}, not "
                                f"{generations.get(e['name'])}")
    return problems


def begin(dep: model.Deployment, folder: Path, now: dt.datetime) -> dict[str, int]:
    """Record each embassy's next key generation, its secrets made first; the pending record before the switch."""
    new = {e.name: secrets.generation(folder, e.name) + 1 for e in dep.embassies}
    for name, g in new.items():
        if holds_kind(dep, name, model.RegisterKind.POSTGRES):
            secrets.secret(folder, secrets.pgbackrest_secret(name, g))
        if holds_kind(dep, name, model.RegisterKind.FILES):
            secrets.secret(folder, secrets.restic_secret(name, g))
    create_private(folder / PENDING, (json.dumps(new, sort_keys=True) + "\n").encode())  # 0600 like the secrets
    for name, g in new.items():
        secrets.record_generation(folder, name, g, now.isoformat())
    return new


def rekey(dep: model.Deployment, target: Target, folder: Path, root: Path, *, say: Say,
          deploy: Callable[[], object] | None = None) -> dict[str, int]:
    """Switch every embassy to its next key generation (or finish a pending switch); returns the generations."""
    from embassy import deploy as deploy_lib

    new = pending(folder)
    if new is None:
        say("closing the current key generation: a replication round (WAL switched and archived in every repo)")
        problems = round_problems(replicate.run_round(target))
        if problems:
            raise UserError(f"the round before the re-key did not reach every embassy: {'; '.join(problems)[:600]}",
                            "nothing was changed: bring the vault back (`embassy replicate --once` shows it), then run "
                            "`embassy custody rotate` again")
        new = begin(dep, folder, dt.datetime.now(dt.UTC))
        say(f"key generations {', '.join(f'{n} {g}' for n, g in new.items())}: new passphrases made on the controller")
    else:
        for name, g in new.items():  # a rotation stopped between the pending record and the switch
            if secrets.generation(folder, name) == g - 1:
                secrets.record_generation(folder, name, g, dt.datetime.now(dt.UTC).isoformat())
        say(f"resuming the pending re-key to key generations {', '.join(f'{n} {g}' for n, g in new.items())}")
    resume = (f"the older generations are intact and open with the current bundle; the new secrets are only in "
              f"{folder} until a bundle holds them: fix the cause and run `embassy custody rotate` again (it "
              "resumes this re-key, it does not start another)")
    say("deploying the new key generation: home's pgBackRest repos and restic repositories, the embassies' config")
    try:
        (deploy or (lambda: deploy_lib.run(target, root, deploys=deploy_lib.AGENTS, say=lambda m: say(f"  {m}"))))()
    except UserError as exc:
        raise UserError(f"the re-key stopped at the deploy: {exc.message}", resume, exc.code) from None
    say("a replication round in the new key generation")
    problems = round_problems(replicate.run_round(target), new)
    if problems:
        raise UserError(f"the re-key's round did not reach every embassy: {'; '.join(problems)[:600]}", resume)
    return new

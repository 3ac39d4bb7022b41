"""`embassy restore … --shares`: open the embassy's custody bundle and put its secrets where the restore reads them.

Nothing comes from home or from the controller's secrets folder: the bundle is read from the embassy's
own vault with its read-only identity and opened with the officials' shares. On the lab and a site its
newest key generation is written onto the embassy host as the deploy writes it (the host is put back as
deployed). On AWS nothing is written to the host's disk: every generation's secrets, the newest included,
are handed to pgBackRest and restic in their environment only (hostsecrets.restore_env, in run_on's env), on the
SSM session's input beside the restore role's session. Outside the lab the stack config's manifest key is the only
trust anchor; on the lab, without one, the bundle's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from embassy import model
from embassy.custody import hostsecrets, kit
from embassy.custody.shares import ShareText
from embassy.errors import BundleInvalid, RestoreFailed
from embassy.replication import verify as vault_verify
from embassy.targets import Host, Target


def stdin_text() -> str:
    if sys.stdin.isatty():
        print("type or paste each share (its 33 words), a blank line between shares, then Ctrl-D:", file=sys.stderr)
    return sys.stdin.read()


def trust_public_key(lab_dir: Path, pem: str) -> None:
    """The manifests are checked with the bundle's public key: recorded for the lab if missing, refused if different."""
    path = lab_dir / vault_verify.PUBLIC_KEY_FILE
    if not path.is_file():
        path.write_text(pem)
    elif path.read_text().strip() != pem.strip():
        raise BundleInvalid(f"the custody bundle's manifest public key differs from {path}",
                            "one of them was replaced: trust neither until checked against home's key record")


def controller_keyring(dep: model.Deployment, target: Target, embassy: str) -> hostsecrets.Keyring:
    """A plain restore's secrets of each key generation: the controller's folder (read when a generation is needed),
    the vault as the target reaches it."""
    folder = target.controller_folder
    return hostsecrets.Keyring(
        lambda generation: hostsecrets.controller_keys(dep, target.vault(embassy), embassy, folder, generation))


def with_shares(dep: model.Deployment, target: Target, embassy: str, hosts: list[Host], texts: list[ShareText],
                say: Callable[[str], None], opened: list[object] | None = None) -> hostsecrets.Keyring:
    """Open the bundle; every key generation's secrets for the restore. On the lab and a site its newest generation
    is written onto the host (as deployed); on AWS nothing is written: the keyring hands the newest over
    (`hand_over`), in the environment of the commands that need it.

    opened: receives the opened bundle (its round at sealing anchors the vault's freshness)."""
    if not hosts:
        raise RestoreFailed(f"embassy {embassy} has no host in the target")
    bundle = kit.open_bundle(dep, kit.TargetVaults(target, dep), embassy, texts, say=say)
    if opened is not None:
        opened.append(bundle)
    # A stack that names its key: verify checks with that one. Only the lab records the bundle's key on this
    # controller; outside it the stack config's key is the only trust anchor (verify refuses without one).
    if not getattr(dep, "manifest_public_key", None) and target.kind == "lab":
        trust_public_key(Path(target.workdir), bundle.manifest_public_key)
    repos = ', '.join(p.repo_path for p in bundle.pgbackrest + bundle.restic) or 'none'
    keys = hostsecrets.Keyring(lambda generation: hostsecrets.bundle_keys(bundle, generation))
    if target.kind == "aws":
        say(f"bundle version {bundle.version} opened with {len(texts)} shares: its restore secrets go to "
            f"{hosts[0].name}'s pgBackRest and restic in their environment only, never to its disk (repositories of "
            f"every key generation: {repos})")
        return hostsecrets.Keyring(keys.keys, hand_over=hostsecrets.bundle_generation(bundle))
    say(f"bundle version {bundle.version} opened with {len(texts)} shares: its restore secrets go to {hosts[0].name} "
        f"(repositories of every key generation: {repos})")
    hostsecrets.apply(target, hosts[0], bundle)
    return keys

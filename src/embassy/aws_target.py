"""The AWS target's data plane: vaults reached with roles assumed through STS, hosts reached over SSM.

Vault identities. Each embassy's vault is read and written only with short-lived credentials of the stack's
own roles (stack outputs `restore_role_arn`, `agent_role_arn`, `custody_role_arn`), obtained by STS AssumeRole
with the controller's own identity (an SSO session, an instance profile: whatever the AWS SDK finds) for
SESSION_SECONDS. Nothing static is ever used for a vault: no access key file, no key in an inventory. The
credentials live in this process's environment under a per-embassy, per-identity prefix (the form
vaultaccess.CredentialSource reads, so every S3 client of the data plane opens with them unchanged) and are
renewed before they expire. Break-glass is never assumed by a command: it needs its external id, a secret
held by people, not by this suite.

Endpoints. The regional S3 and STS endpoints of the embassy's region (virtual-host addressing, the operating
system's CA store). For an emulator, AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3 / _STS) with EMBASSY_AWS_CA_FILE:
https only; the outputs and the endpoint decide where to look, never what is trusted (the manifests are
checked against the stack config's `data-embassy:manifest_public_key` whatever served them).

Hosts. A command on an enclave host is ssh through an SSM session (`aws ssm start-session --document-name
AWS-StartSSHSession`), as inventories/aws.py documents for the deploys; the ProxyCommand is given on the
command line so that no ssh_config has to carry it. `host_command_argv` builds the whole argv from lists:
the remote command is shlex-joined from an argv, the instance id and the region were validated by the
outputs model. Credentials for pgBackRest and restic on the host (the restore role's session that `run_on`
hands every command on an embassy host, `run_with_credentials`) travel on the session's standard input as
`export` lines read by `sh -s` (targets.env_script, the same on every target): never in an argv (readable by every local user in
/proc, on the controller and on the host), never in an inventory, never on the host's disk.

Home. It is on premises, not in the stack: `custody init` signs the bundles' headers there, at EMBASSY_HOME_HOST (as
inventories/aws.py takes it for the deploys), over the operator's ssh with home's host key already known
(StrictHostKeyChecking=yes, never learnt here). A custody bundle of an AWS embassy records the restore role's ARN
(`vault_role`), never a key.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from embassy import model
from embassy.aws_outputs import IDENTITY_ROLES, EmbassyOutputs, StackOutputs, parse, read_file
from embassy.errors import (
    CredentialsUnavailable,
    HostUnknown,
    OptionInvalid,
    OutputsInvalid,
    RoleNotAssumed,
    ToolMissing,
)
from embassy.replication import vaultnet
from embassy.targets import (
    AWS_SSH_CONFIG_ENV,
    HOST_SHELL,
    AwsTarget,
    Host,
    Role,
    aws_hosts,
    export_lines,
    run_host,
    stack_outputs,
)
from embassy.vaultaccess import ENV_PARTS, SYSTEM_CA, CredentialSource, VaultAccess

SESSION_SECONDS = 900  # STS's minimum: a leaked session is worth a quarter of an hour
# The longest session a role of the stack grants (infra/iam.py: max_session_duration): a command on a host that runs
# longer than its session (pgBackRest cannot renew shared keys) gets one this long, and no longer.
MAX_SESSION_SECONDS = 3600
RENEW_BEFORE = dt.timedelta(minutes=5)
CA_ENV = "EMBASSY_AWS_CA_FILE"
SSH_USER = "admin"  # Debian's AMIs
SSM_DOCUMENT = "AWS-StartSSHSession"
SSM_TOOLS = ("aws", "session-manager-plugin", "ssh")
# pgBackRest reads each repo's S3 keys from PGBACKREST_REPO<N>_S3_*; restic (and the AWS SDKs) from AWS_*.
PGBACKREST_PARTS = {"access_key_id": "S3_KEY", "secret_access_key": "S3_KEY_SECRET", "session_token": "S3_TOKEN"}
AWS_PARTS = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY",
             "session_token": "AWS_SESSION_TOKEN"}
HOME_HOST_ENV = "EMBASSY_HOME_HOST"  # home's SSH address (on premises), as inventories/aws.py reads it
HOME_ADDRESS = re.compile(r"(?:[a-z_][a-z0-9_-]{0,31}@)?[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")


def env_prefix(embassy: str, identity: str) -> str:
    """Where an identity's assumed credentials live in this process's environment."""
    return f"EMBASSY_AWS_{embassy.upper().replace('-', '_')}_{identity.upper()}"


def _override(service: str) -> str | None:
    url = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")
    if url and not url.startswith("https://"):
        raise OptionInvalid(f"AWS_ENDPOINT_URL{'_' + service.upper()} is {url}: not https",
                            "vault and STS traffic is TLS only: give the emulator's https URL and its CA in " + CA_ENV)
    return url or None


def endpoint(service: str, region: str) -> str:
    """The regional endpoint of `service` (s3, sts), or the emulator's."""
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return _override(service) or f"https://{service}.{region}.{suffix}"


def ca_file() -> str:
    return os.environ.get(CA_ENV) or SYSTEM_CA


def _verify_path(ca: str) -> str:
    if ca != SYSTEM_CA:
        return ca
    import ssl

    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.openssl_cafile


# --------------------------------------------------------------------------- identities: STS AssumeRole


@dataclass(frozen=True)
class Session:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires: dt.datetime

    def parts(self) -> dict[str, str]:
        return {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key,
                "session_token": self.session_token}


_sessions: dict[tuple[str, str], Session] = {}
_lock = threading.Lock()


def duration_for(valid_for: float) -> int:
    """The session length that covers `valid_for` seconds of use and RENEW_BEFORE, within STS's and the roles' bounds."""
    return int(min(MAX_SESSION_SECONDS, max(SESSION_SECONDS, valid_for + RENEW_BEFORE.total_seconds())))


def assume(role_arn: str, region: str, session_name: str, *, valid_for: float = 0) -> Session:
    """Short-lived credentials of `role_arn`, valid for `valid_for` more seconds (within MAX_SESSION_SECONDS) and at
    least RENEW_BEFORE: a cached session is reused while it lasts that long. RoleNotAssumed if refused."""
    from botocore.exceptions import BotoCoreError, ClientError

    key = (role_arn, endpoint("sts", region))
    duration = duration_for(valid_for)
    # Reused while it covers the use (up to what a new one could) and a minute, and never with less than RENEW_BEFORE.
    needed = max(RENEW_BEFORE, dt.timedelta(seconds=min(valid_for, duration - RENEW_BEFORE.total_seconds()) + 60))
    with _lock:
        got = _sessions.get(key)
        if got is not None and got.expires - dt.datetime.now(dt.UTC) > needed:
            return got
        try:
            sts = vaultnet.session().client("sts", region_name=region, endpoint_url=endpoint("sts", region),
                                                 verify=_verify_path(ca_file()))
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name,
                                    DurationSeconds=duration)["Credentials"]
        except (BotoCoreError, ClientError) as exc:
            raise RoleNotAssumed(f"cannot assume {role_arn}: {exc}") from None
        if not creds.get("SessionToken"):  # only temporary credentials are a role's; anything else is refused
            raise RoleNotAssumed(f"STS answered for {role_arn} without a session token: not temporary credentials")
        expires = creds["Expiration"]
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
        got = Session(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"], expires)
        _sessions[key] = got
        return got


def forget_sessions() -> None:
    """Drop every cached session (tests; a controller that changes its own identity)."""
    with _lock:
        _sessions.clear()


@dataclass(frozen=True)
class AssumedRole(CredentialSource):
    """A vault identity that is a role of the stack: assumed on first use, exported under `env` for the clients."""

    role_arn: str = ""
    region: str = ""
    session_name: str = "embassy"

    def credentials(self, valid_for: float = 0) -> Session:
        return assume(self.role_arn, self.region, self.session_name, valid_for=valid_for)

    def check(self, what: str, environ: Mapping[str, str] | None = None) -> None:
        """Assume the role (or reuse a live session) and export it under the prefix that `as_spec` names.

        Whatever stood under that prefix before (static keys someone exported) is overwritten: a role's
        session is the only thing an AWS vault is opened with."""
        session = self.credentials()
        for part, suffix in ENV_PARTS.items():
            os.environ[f"{self.env}_{suffix}"] = session.parts()[part]


def host_env(session: Session, *, pgbackrest_repos: Sequence[int] = (), restic: bool = True) -> dict[str, str]:
    """The environment pgBackRest (per repo) and restic read a session from."""
    env: dict[str, str] = {}
    for repo in pgbackrest_repos:
        env[f"PGBACKREST_REPO{int(repo)}_S3_KEY_TYPE"] = "shared"
        env.update({f"PGBACKREST_REPO{int(repo)}_{suffix}": session.parts()[part]
                    for part, suffix in PGBACKREST_PARTS.items()})
    if restic:
        env.update({name: session.parts()[part] for part, name in AWS_PARTS.items()})
    return env


# --------------------------------------------------------------------------- hosts: ssh through SSM


def proxy_command(region: str) -> str:
    """ssh's ProxyCommand for an SSM session; %h and %p are ssh's own tokens, the region was validated."""
    return shlex.join(["aws", "ssm", "start-session", "--region", region, "--document-name", SSM_DOCUMENT,
                       "--target", "%h", "--parameters", "portNumber=%p"])


def ssh_argv(host: Host, remote: Sequence[str], *, known_hosts: Path, ssh_config: str | None = None) -> list[str]:
    """The argv that runs the remote argv `remote` on `host` over SSM (the remote shell gets it shlex-joined)."""
    if host.instance_id is None or host.region is None:
        raise HostUnknown(f"host '{host.name}' has no instance id or region in the stack outputs",
                          "run `pulumi up` for the stack and save its outputs again")
    return ["ssh", *(["-F", ssh_config] if ssh_config else []),
            "-o", f"ProxyCommand={proxy_command(host.region)}",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
            # The session reaches exactly this instance (SSM authenticates it by its id): its key is learnt on first
            # contact and pinned in the stack's own known_hosts file from then on.
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-l", SSH_USER, "--", host.instance_id, shlex.join(list(remote))]


def credentials_script(env: Mapping[str, str], argv: Sequence[str]) -> str:
    """What `sh -s` reads on the host: the credentials exported (shell builtins: no argv shows them), then argv."""
    return "\n".join([*export_lines(env), "exec " + shlex.join(list(argv))]) + "\n"


HOST_IDENTITY = "reader"  # what the data plane's commands on an embassy host read the vault with: the restore role
EMBASSY_REPO = 1  # an embassy host's pgBackRest has one repo, its own vault (deploy_embassy, custody.hostsecrets)


class AwsDataTarget(AwsTarget):
    """The AWS target with its data plane: validated outputs, assumed roles, SSM command lines."""

    def __init__(self, dep: model.Deployment, outputs: Mapping[str, Any] | None = None,
                 outputs_file: Path | None = None, workdir: Path | None = None) -> None:
        if outputs is not None and outputs_file is not None:
            raise OptionInvalid("outputs given twice", "give --outputs FILE or let the pulumi CLI read them, not both")
        raw = dict(outputs) if outputs is not None else None
        super().__init__(dep, raw, workdir=workdir, ssm_bucket=None)
        self._outputs_file = outputs_file
        self._parsed: StackOutputs | None = None

    @property
    def outputs(self) -> dict[str, Any]:
        if self._outputs is None:
            self._outputs = read_file(self._outputs_file) if self._outputs_file is not None else stack_outputs(self.stack)
            if not isinstance(self._outputs, dict):
                raise OutputsInvalid(f"{self._source}: the stack outputs are not a JSON object")
        return self._outputs

    @property
    def _source(self) -> str:
        return f"--outputs {self._outputs_file}" if self._outputs_file else f"outputs of stack {self.stack}"

    @property
    def parsed(self) -> StackOutputs:
        """Every output the data plane reads, validated (OutputsInvalid, exit 2, naming the key otherwise)."""
        if self._parsed is None:
            self._parsed = parse(self.outputs, self.dep, self._source)
        return self._parsed

    def embassy_outputs(self, embassy: str) -> EmbassyOutputs:
        self.embassy_hosts(embassy)  # refuses an embassy the stack does not declare
        return self.parsed.embassies[embassy]

    @cached_property
    def hosts(self) -> list[Host]:
        parse(self.outputs, self.dep, self._source, hosts_only=True)  # what reaches an argv is checked first
        return aws_hosts(self.dep, self.outputs)

    # ---- vaults

    def vault(self, embassy: str) -> VaultAccess:
        out = self.embassy_outputs(embassy)
        identities: dict[str, CredentialSource] = {
            name: AssumedRole(env=env_prefix(embassy, name), role_arn=out.role_arn(name), region=out.region,
                              session_name=f"embassy-{self.stack}-{name}")
            for name in IDENTITY_ROLES}
        s3 = endpoint("s3", out.region)
        return VaultAccess(embassy=embassy, endpoint=s3, bucket=out.vault_bucket, ca_file=ca_file(),
                           addressing="path" if _override("s3") else "virtual", region=out.region,
                           identities=identities)

    def vault_role(self, embassy: str) -> str | None:
        return self.embassy_outputs(embassy).restore_role_arn

    def home_host(self) -> Host | None:
        """Home is on premises, not in the stack: at EMBASSY_HOME_HOST (as inventories/aws.py takes it for the
        deploys), reached with the operator's own ssh; None when it is not set."""
        address = os.environ.get(HOME_HOST_ENV, "")
        if not address:
            return None
        if not HOME_ADDRESS.fullmatch(address):
            raise OptionInvalid(f"{HOME_HOST_ENV}={address[:60]!r} is not an SSH address ([user@]host)",
                                f"export {HOME_HOST_ENV}=admin@home.example.ee (a DNS name or an IP, no options)")
        return Host("home", Role.HOME, address=address)

    def session(self, embassy: str, identity: str, valid_for: float = 0) -> Session:
        """A session of the identity's role that lasts `valid_for` more seconds (a host command's timeout)."""
        source = self.vault(embassy).identity(identity)
        if not isinstance(source, AssumedRole):
            raise CredentialsUnavailable(f"vault of {embassy}: identity {identity} is not a role of the stack")
        return source.credentials(valid_for)

    # ---- hosts

    def require_ansible(self) -> None:
        """The SSM connection plugin comes with the `ansible` package (the `aws` extra): no ansible-galaxy."""
        from embassy.targets import aws_collection_path

        if aws_collection_path() is None:
            raise ToolMissing("the amazon.aws / community.aws collections are not installed: AWS hosts are reached "
                              "over SSM (aws_ssm connection), which ansible-core does not ship",
                              "pip install -c constraints.txt -e '.[aws]' (the `ansible` package brings them), "
                              "and install the AWS session-manager-plugin")

    @property
    def known_hosts(self) -> Path:
        return self.controller_folder / "aws_known_hosts"

    def host_command_argv(self, host: Host | str, remote: Sequence[str]) -> list[str]:
        """The argv that runs the remote argv on the host over SSM (ToolMissing, exit 2, if this machine cannot)."""
        missing = [tool for tool in SSM_TOOLS if shutil.which(tool) is None]
        if missing:
            raise ToolMissing(f"reaching AWS hosts over SSM needs {', '.join(missing)}, not installed here",
                              "install the AWS CLI v2 and its session-manager-plugin (and an ssh client); the "
                              "ProxyCommand is given on the command line, no ssh_config is needed")
        return ssh_argv(self._host(host), remote, known_hosts=self.known_hosts,
                        ssh_config=os.environ.get(AWS_SSH_CONFIG_ENV))

    def host_argv(self, host: Host | str, command: str) -> list[str]:
        """A shell command of the data plane's (a fixed string of its own) on the host, over SSM; on home (on
        premises) over the operator's ssh, its host key checked against their known_hosts (never learnt here)."""
        h = host if isinstance(host, Host) else None
        if h is not None and h.role is Role.HOME and h.instance_id is None:
            return ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=20",
                    "--", str(h.address), command]
        return self.host_command_argv(host, ["sh", "-c", command])

    # ---- a data-plane command on a host: Target.run_on, with the restore role's session on an embassy host

    def hands_session(self, host: Host) -> bool:
        """Every command on an embassy host (without its own input) gets a fresh session of the restore role for
        pgBackRest and restic: the host's own instance role is not what verify and restore read the vault with.
        Home (on premises) gets none."""
        return host.embassy is not None

    def session_env(self, host: Host, valid_for: float) -> dict[str, str]:
        if host.embassy is None:
            return {}
        # The session must outlast the command (pgBackRest cannot renew shared keys): as long as its timeout.
        return host_env(self.session(host.embassy, HOST_IDENTITY, valid_for=valid_for), pgbackrest_repos=(EMBASSY_REPO,))

    def shell_argv(self, host: Host) -> list[str]:
        if host.role is Role.HOME and host.instance_id is None:
            return super().shell_argv(host)
        return self.host_command_argv(host, HOST_SHELL.split())

    def run_with_credentials(self, host: Host | str, argv: Sequence[str], *, embassy: str, identity: str = "reader",
                             pgbackrest_repos: Sequence[int] = (1,), user: str = "postgres",
                             timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """Run argv on the host as `user`, with a fresh session of the identity's role for pgBackRest and restic."""
        session = self.session(embassy, identity, valid_for=timeout)
        script = credentials_script(host_env(session, pgbackrest_repos=pgbackrest_repos), argv)
        remote = ["sudo", "runuser", "-u", user, "--", "sh", "-s"]
        return run_host(self.host_command_argv(host, remote), stdin=script, timeout=timeout)


def bundle_vault_record(target: AwsDataTarget, embassy: str) -> Any:
    """The custody bundle's vault record of an AWS embassy, as `custody init --target aws` seals it
    (custody.bundle.vault_access): where the vault is and which role reads it (the stack output restore_role_arn), no
    key: a controller that has only the custody sheets assumes that role with its own identity. The CA is the
    operating system's (empty PEM) unless an emulator's is configured."""
    from embassy.custody.bundle import vault_access

    return vault_access(target, embassy)


def aws_target(dep: model.Deployment, outputs: Path | None = None) -> AwsDataTarget:
    """The `--target aws` of a command: outputs from FILE (validated now: bad input stops before anything is
    reached), else from `pulumi stack output --json` when first needed."""
    target = AwsDataTarget(dep, outputs_file=outputs)
    if outputs is not None:
        target.parsed  # noqa: B018 - validation only: every output the data plane reads
    return target

"""The stack outputs the AWS target reads: `pulumi stack output --json`, or the same JSON saved in a file (--outputs).

What it needs, per embassy under `embassies.<name>` (stacks/__main__.py exports exactly these, from
infra/embassy.py):

    region                 the embassy's AWS region; must be the stack config's region for that embassy
    mode                   warm | cold; must be the stack config's mode
    vault_bucket           the vault's bucket name
    vault_arn              arn:<partition>:s3:::<vault_bucket>
    restore_role_arn       the read-only identity (verify, restore, restore tests)
    agent_role_arn         the agents' identity (writes replicas; never deletes a version, never touches a lock)
    custody_role_arn       the custody identity (bundles under custody/<stack>/ only)
    break_glass_role_arn   break-glass: named here for completeness, never assumed by a command
    host_instance_ids      the enclave's EC2 instances (i-…), the SSM targets
    host_private_ips       their private addresses, in the same order

Anything else in the outputs is ignored. Every embassy of the stack config must be there; an embassy the
stack config does not declare is refused (outputs of another stack). A value of the wrong shape is refused
before anything is reached, naming its key path (`embassies.de.restore_role_arn`), exit 2 with a HINT.

The adversary: outputs handed over from elsewhere (a file on a shared drive, a copy of another stack's) that
point the controller at another account's roles or bucket, or smuggle shell or ssh syntax into an instance
id or a region (both end up in the SSM command line). The outputs decide *where* to look, never what is
trusted: the manifests are checked against the stack config's manifest key, whatever vault they came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from embassy import model
from embassy.errors import OutputsInvalid

MAX_OUTPUTS_BYTES = 4 << 20
REGION = r"^[a-z]{2,}(-[a-z]+)+-\d+$"
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
ROLE_ARN = r"^arn:aws(-[a-z]+)*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"
BUCKET_ARN = r"^arn:aws(-[a-z]+)*:s3:::[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
INSTANCE_ID = r"^(i|mi)-[0-9a-z]{1,32}$"  # EC2 (i-) or SSM-managed (mi-): letters and digits only
IPV4 = r"^(\d{1,3}\.){3}\d{1,3}$"
HINT = ("save the stack's outputs with `pulumi stack output --json --stack S > outputs.json` and pass "
        "--outputs outputs.json (see the module docstring of embassy.aws_outputs for the keys it needs)")
IDENTITY_ROLES = {"reader": "restore_role_arn", "agent": "agent_role_arn", "custody": "custody_role_arn"}


class HostOutputs(BaseModel):
    """What naming and reaching an embassy's hosts needs (harden and deploy need no more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    region: StrictStr = Field(pattern=REGION, max_length=64)
    mode: model.Mode
    host_instance_ids: list[StrictStr] = Field(max_length=16)
    host_private_ips: list[StrictStr] = Field(max_length=16)

    @model_validator(mode="after")
    def _hosts(self) -> HostOutputs:
        for i, iid in enumerate(self.host_instance_ids):
            if not re.fullmatch(INSTANCE_ID, iid):
                raise ValueError(f"host_instance_ids[{i}] {iid[:40]!r} is not an EC2 instance id (i-…)")
        for i, ip in enumerate(self.host_private_ips):
            if not re.fullmatch(IPV4, ip):
                raise ValueError(f"host_private_ips[{i}] {ip[:40]!r} is not an IPv4 address")
        if len(self.host_private_ips) != len(self.host_instance_ids):
            raise ValueError("host_instance_ids and host_private_ips differ in length")
        return self


class EmbassyOutputs(HostOutputs):
    """One embassy's outputs as infra/embassy.py exports them: its hosts, its vault and its roles."""

    vault_bucket: StrictStr = Field(pattern=BUCKET)
    vault_arn: StrictStr = Field(pattern=BUCKET_ARN)
    restore_role_arn: StrictStr = Field(pattern=ROLE_ARN)
    agent_role_arn: StrictStr = Field(pattern=ROLE_ARN)
    custody_role_arn: StrictStr = Field(pattern=ROLE_ARN)
    break_glass_role_arn: StrictStr = Field(pattern=ROLE_ARN)

    @model_validator(mode="after")
    def _vault(self) -> EmbassyOutputs:
        if not self.vault_arn.endswith(f":::{self.vault_bucket}"):
            raise ValueError(f"vault_arn {self.vault_arn} is not the ARN of vault_bucket {self.vault_bucket}")
        return self

    def role_arn(self, identity: str) -> str:
        return str(getattr(self, IDENTITY_ROLES[identity]))


class HostsOutputs(BaseModel):
    """The outputs of one stack that naming its hosts reads."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    stack: StrictStr | None = None
    embassies: dict[StrictStr, HostOutputs] = Field(min_length=1)


class StackOutputs(HostsOutputs):
    """The outputs of one stack that the AWS target's data plane reads."""

    embassies: dict[StrictStr, EmbassyOutputs] = Field(min_length=1)  # type: ignore[assignment]


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse(raw: Any, dep: model.Deployment, source: str, *, hosts_only: bool = False) -> StackOutputs:
    """Validate outputs against the stack config: OutputsInvalid (exit 2) naming the key path otherwise.

    hosts_only: what naming the hosts needs (harden, deploy); the result then holds HostOutputs."""
    if not isinstance(raw, dict):
        raise OutputsInvalid(f"{source}: the stack outputs are not a JSON object", HINT)
    try:
        outputs: Any = (HostsOutputs if hosts_only else StackOutputs).model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise OutputsInvalid(f"{source}: {_where(first['loc'])}: {first['msg']}", HINT) from None
    if outputs.stack is not None and outputs.stack != dep.stack:
        raise OutputsInvalid(f"{source}: outputs of stack '{outputs.stack}', not of '{dep.stack}'",
                             f"pass the outputs of stack '{dep.stack}': {HINT}")
    declared = {e.name: e for e in dep.embassies}
    for name in outputs.embassies:
        if name not in declared:
            raise OutputsInvalid(f"{source}: embassies.{name}: stack '{dep.stack}' declares no such embassy",
                                 f"these are another stack's outputs, or the stack config is not the one deployed: {HINT}")
    for name, emb in declared.items():
        out = outputs.embassies.get(name)
        if out is None:
            raise OutputsInvalid(f"{source}: embassies.{name}: missing", f"run `pulumi up --stack {dep.stack}`: {HINT}")
        if out.region != emb.region:
            raise OutputsInvalid(f"{source}: embassies.{name}.region: {out.region}, the stack config says {emb.region}",
                                 f"run `pulumi up --stack {dep.stack}` so that the deployment matches its config")
        if out.mode is not emb.mode:
            raise OutputsInvalid(f"{source}: embassies.{name}.mode: {out.mode.value}, the stack config says "
                                 f"{emb.mode.value}", f"run `pulumi up --stack {dep.stack}`")
    return outputs


def read_file(path: Path) -> Any:
    """The JSON of outputs saved from `pulumi stack output --json` (the CLI elsewhere), bounded."""
    try:
        data = path.read_bytes()[: MAX_OUTPUTS_BYTES + 1]
    except OSError as exc:
        raise OutputsInvalid(f"--outputs {path}: cannot read it: {exc.strerror or exc}", HINT) from None
    if len(data) > MAX_OUTPUTS_BYTES:
        raise OutputsInvalid(f"--outputs {path}: more than {MAX_OUTPUTS_BYTES} bytes: not a stack's outputs", HINT)
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise OutputsInvalid(f"--outputs {path}: not JSON ({exc})", HINT) from None
    return raw

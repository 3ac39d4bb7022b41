"""The desired-state plan: run the program in stacks/ under Pulumi's mocks and record what it registers.

`python -m embassy.plan --root ROOT --stack S [--out F]` does the run, in its own process: the Pulumi
runtime keeps global state (one root Stack per process), and a reviewer plans other checkouts (git
worktrees of other refs) by putting ROOT/src first on PYTHONPATH. `compute_plan` starts that process.

The plan (see DESIGN.md, "Interfaces"):
    {"stack", "project", "resources": [{"urn", "type", "name", "custom", "parent", "provider", "inputs",
     "dependencies", "protect", "retainOnDelete"}], "outputs"}
- urn: built as the engine builds it: the Stack type is not in the chain, the parent's full type chain is;
- provider: null for the stack, components and providers; else {"urn": provider URN, "region": its region};
- inputs: the properties the engine receives (camelCase), whole floats as ints, secrets as "[secret]";
- resources sorted by URN, keys sorted, no ids or times that change between runs: identical bytes every run.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import runpy
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from embassy import model
from embassy.errors import EXIT_USAGE, UserError

# Pulumi's wire signatures (sdk/python/lib/pulumi/runtime/rpc.py).
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
OUTPUT_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
REDACTED = "[secret]"
STACK_TYPE = "pulumi:pulumi:Stack"
PROVIDER_PREFIX = "pulumi:providers:"

# Secret config the program reads: the plan always supplies them (from EMBASSY_SECRET_<KEY> or a placeholder).
SECRET_KEYS = model.SECRET_CONFIG_KEYS
PLACEHOLDER_SECRET = "plan-placeholder-secret"
# The account the mocks answer getCallerIdentity with (AWS's documentation example account).
MOCK_ACCOUNT = "123456789012"


class PlanFailed(UserError):
    """The program could not be planned."""


# --------------------------------------------------------------------------- value cleaning


def clean(value: Any) -> Any:
    """An engine property value as the plan shows it: secrets redacted, refs as URNs, whole floats as ints."""
    if isinstance(value, dict):
        sig = value.get(SIG_KEY)
        if sig == SECRET_SIG:
            return REDACTED
        if sig == RESOURCE_SIG:
            return {"urn": value.get("urn")}
        if sig == OUTPUT_SIG:
            if value.get("secret"):
                return REDACTED
            return clean(value["value"]) if "value" in value else UNKNOWN
        return {k: clean(v) for k, v in value.items() if k != SIG_KEY}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def secret_env_name(key: str) -> str:
    return "EMBASSY_SECRET_" + key.upper().replace("-", "_")


# --------------------------------------------------------------------------- mocks


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _partition(region: str) -> str:
    nation = model.region_nation(region)
    return (nation.partition_of(region) if nation else None) or "aws"


def _provider_urn(ref: str) -> str:
    """A provider reference is `URN::ID`."""
    return ref.rsplit("::", 1)[0] if ref else ""


def _plan_monitor_classes() -> tuple[type, type]:
    """The mock classes, built on first use so that importing embassy.plan stays cheap."""
    from google.protobuf import json_format
    from pulumi.runtime import mocks as pmocks

    class PlanMonitor(pmocks.MockMonitor):
        """Records every register request (parent, provider, dependencies, raw inputs) with engine URNs."""

        def __init__(self, mocks: pmocks.Mocks, project: str, stack: str) -> None:
            super().__init__(mocks)
            self.project = project
            self.stack = stack
            self.records: dict[str, dict[str, Any]] = {}
            self.outputs: dict[str, Any] = {}
            self.regions: dict[str, str] = {}  # provider URN -> region
            self.states: dict[str, dict[str, Any]] = {}  # resource id -> mocked state

        def make_urn(self, parent: str, type_: str, name: str) -> str:
            # The engine: parent's qualified type chain + "$" + type, except under the root Stack.
            if parent:
                parent_type = parent.split("::")[2]
                if parent_type != STACK_TYPE:
                    type_ = f"{parent_type}${type_}"
            return f"urn:pulumi:{self.stack}::{self.project}::{type_}::{name}"

        def RegisterResource(self, request: Any) -> Any:  # gRPC method name
            urn = self.make_urn(request.parent, request.type, request.name)
            inputs = json_format.MessageToDict(request.object)
            if request.type.startswith(PROVIDER_PREFIX):
                self.regions[urn] = str(clean(inputs.get("region", "")))
            self.records[urn] = {
                "urn": urn,
                "type": request.type,
                "name": request.name,
                "custom": bool(request.custom),
                "parent": request.parent or None,
                "provider": _provider_urn(request.provider),
                "inputs": clean(inputs),
                "dependencies": sorted(set(request.dependencies)),
                "protect": bool(request.protect),
                "retainOnDelete": bool(request.retainOnDelete),
            }
            return super().RegisterResource(request)

        def RegisterResourceOutputs(self, request: Any) -> Any:
            self.outputs[request.urn] = clean(json_format.MessageToDict(request.outputs))
            return super().RegisterResourceOutputs(request)

    class PlanMocks(pmocks.Mocks):
        """Deterministic cloud answers: ids and ARNs derived from type and name, never random."""

        monitor: PlanMonitor

        def region_of(self, provider_ref: str) -> str:
            return self.monitor.regions.get(_provider_urn(provider_ref), "")

        def call(self, args: pmocks.MockCallArgs) -> dict[str, Any]:  # type: ignore[override]
            region = self.region_of(args.provider)
            token, a = args.token, args.args
            if token == "aws:index/getCallerIdentity:getCallerIdentity":
                arn = f"arn:{_partition(region)}:iam::{MOCK_ACCOUNT}:role/planner"
                return {"accountId": MOCK_ACCOUNT, "arn": arn, "userId": "AROAPLANNER", "id": MOCK_ACCOUNT}
            if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                names = [f"{region}{z}" for z in "abc"]
                return {"names": names, "zoneIds": [f"{region[:3]}-az{i}" for i in (1, 2, 3)], "state": "available",
                        "id": region, "groupNames": [region]}
            if token == "aws:ec2/getAmi:getAmi":
                name = next((f["values"][0] for f in a.get("filters", []) if f["name"] == "name"), "image-*")
                image = name.replace("*", "20260101-0000")
                return {"id": "ami-" + _digest(region, image)[:17], "name": image, "ownerId": a.get("owners", [""])[0],
                        "architecture": "arm64" if "arm64" in image else "x86_64"}
            if token == "aws:ec2/getVpcEndpointService:getVpcEndpointService":
                service = a["service"]
                return {"serviceName": f"com.amazonaws.{region}.{service}", "serviceType": a.get("serviceType", ""),
                        "id": f"{region}-{service}"}
            if token == "aws:index/getServicePrincipal:getServicePrincipal":
                service = a["serviceName"]
                return {"name": f"{service}.amazonaws.com", "id": f"{service}.{region}", "suffix": "amazonaws.com",
                        "region": region}
            raise NotImplementedError(f"plan mocks: no answer for invoke {token}; add one in embassy/plan.py")

        def new_resource(self, args: pmocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            typ, name, inputs = args.typ, args.name, dict(args.inputs)
            h = _digest(typ, name)
            if typ.startswith(PROVIDER_PREFIX):
                return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32], inputs
            region = self.region_of(args.provider or "")
            state = {**inputs, **_computed(typ, name, inputs, region, h, self.monitor.states)}
            rid = str(state.pop("__id"))
            self.monitor.states[rid] = state
            return rid, state

    return PlanMonitor, PlanMocks


def _computed(typ: str, name: str, inputs: Mapping[str, Any], region: str, h: str,
              states: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What the cloud would compute for a resource: id (as "__id"), ARN, names, addresses."""
    p = _partition(region)
    module = typ.split(":")[1].split("/")[0] if typ.count(":") >= 2 else "index"
    if typ == "aws:s3/bucket:Bucket":
        bucket = inputs.get("bucket") or f"{name}-{h[:8]}"
        return {"__id": bucket, "bucket": bucket, "arn": f"arn:{p}:s3:::{bucket}", "region": region,
                "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com"}
    if typ == "aws:kms/key:Key":
        key = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
        return {"__id": key, "keyId": key, "arn": f"arn:{p}:kms:{region}:{MOCK_ACCOUNT}:key/{key}"}
    if typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
        kind = "role" if typ.endswith("Role") else "instance-profile"
        rname = inputs.get("name") or f"{name}-{h[:7]}"
        return {"__id": rname, "name": rname, "arn": f"arn:{p}:iam::{MOCK_ACCOUNT}:{kind}/{rname}",
                "uniqueId": "AROA" + h[:17].upper()}
    if typ == "aws:cloudwatch/logGroup:LogGroup":
        gname = inputs.get("name") or f"{name}-{h[:7]}"
        return {"__id": gname, "name": gname, "arn": f"arn:{p}:logs:{region}:{MOCK_ACCOUNT}:log-group:{gname}"}
    if typ == "aws:cloudtrail/trail:Trail":
        tname = inputs.get("name") or name
        arn = f"arn:{p}:cloudtrail:{region}:{MOCK_ACCOUNT}:trail/{tname}"
        return {"__id": arn, "arn": arn, "homeRegion": region}
    if typ == "aws:ec2/instance:Instance":
        subnet = states.get(str(inputs.get("subnetId")), {})
        net = ipaddress.ip_network(str(subnet.get("cidrBlock", "10.0.0.0/24")))
        ip = net.network_address + 10 + int(h[:6], 16) % (net.num_addresses - 20)
        iid = "i-" + h[:17]
        return {"__id": iid, "privateIp": str(ip), "arn": f"arn:{p}:ec2:{region}:{MOCK_ACCOUNT}:instance/{iid}",
                "primaryNetworkInterfaceId": "eni-" + h[17:34], "privateDns": f"ip-{str(ip).replace('.', '-')}.internal"}
    prefixes = {"aws:ec2/vpc:Vpc": "vpc", "aws:ec2/subnet:Subnet": "subnet", "aws:ec2/securityGroup:SecurityGroup": "sg",
                "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup": "sg", "aws:ec2/routeTable:RouteTable": "rtb",
                "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce", "aws:ec2/flowLog:FlowLog": "fl",
                "aws:ec2/routeTableAssociation:RouteTableAssociation": "rtbassoc"}
    if typ in prefixes:
        rid = f"{prefixes[typ]}-{h[:17]}"
        extra = {"prefixListId": "pl-" + h[17:25]} if typ == "aws:ec2/vpcEndpoint:VpcEndpoint" else {}
        return {"__id": rid, "arn": f"arn:{p}:ec2:{region}:{MOCK_ACCOUNT}:{prefixes[typ]}/{rid}", **extra}
    return {"__id": f"{name}-{h[:8]}", "arn": f"arn:{p}:{module}:{region}:{MOCK_ACCOUNT}:{name}"}


# --------------------------------------------------------------------------- running the program


def _program_path(root: Path) -> tuple[str, Path]:
    """The project name and the program's __main__.py, as Pulumi.yaml declares them."""
    project_file = root / "Pulumi.yaml"
    if not project_file.is_file():
        raise PlanFailed(f"no Pulumi.yaml in {root}", "run from the project folder or pass --root")
    try:
        doc = yaml.safe_load(project_file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PlanFailed(f"cannot read {project_file}: {str(exc).splitlines()[0]}",
                         "Pulumi.yaml is YAML text: name, runtime, main (see Pulumi's project file reference)") from None
    if not isinstance(doc, dict):
        raise PlanFailed(f"{project_file} is not a mapping", "Pulumi.yaml holds `name:`, `runtime:` and `main:` keys")
    main = root / str(doc.get("main") or ".")
    return str(doc.get("name") or model.NAMESPACE), (main / "__main__.py" if main.is_dir() else main)


def stack_config(root: Path, stack: str, env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The config as the engine hands it to the program (JSON strings), and which keys are secret."""
    values = model.read_stack_values(model.stack_file(stack, root))
    secure = {k for k, v in values.items() if isinstance(v, dict) and set(v) == {"secure"}}
    config = model.to_config_json({k: v for k, v in values.items() if k not in secure})
    secret_keys = []
    for key in sorted(secure | set(SECRET_KEYS)):
        full = f"{model.NAMESPACE}:{key}"
        config[full] = env.get(secret_env_name(key), PLACEHOLDER_SECRET)
        secret_keys.append(full)
    return config, secret_keys


def install_mocks(project: str, stack: str) -> Any:
    """Point the Pulumi runtime of this process at the plan's mocks; returns the recording monitor."""
    import pulumi

    monitor_cls, mocks_cls = _plan_monitor_classes()
    mocks = mocks_cls()
    monitor = monitor_cls(mocks, project, stack)
    mocks.monitor = monitor
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=True, monitor=monitor)
    return monitor


def run_program(root: Path, stack: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ROOT's program for `stack` under mocks in this process (once per process) and return the plan."""
    import pulumi
    from pulumi.runtime.settings import get_root_resource
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    root = root.resolve()
    model.load_stack(stack, root)  # invalid config: ConfigInvalid before anything runs
    project, program = _program_path(root)
    config, secret_keys = stack_config(root, stack, os.environ if env is None else env)
    pulumi.runtime.set_all_config(config, secret_keys)
    monitor = install_mocks(project, stack)
    sys.path.insert(0, str(program.parent))

    # The program runs outside the event loop, as Pulumi's own mock tests run one: its synchronous invokes
    # (availability zones) then run the loop to completion. Inside a loop callback each of them nests a
    # `_sync_await`, which pads the loop's ready list with as many handles as were pending, and those pile
    # up embassy after embassy (the plan's time grew with the square of the embassies).
    failed: BaseException | None = None
    try:
        runpy.run_path(str(program), run_name="__main__")
    except BaseException as exc:  # re-raised below, once the runtime has settled, as run_pulumi_func does
        failed = exc

    def finish() -> None:
        if failed is not None:
            raise failed
        # set_mocks registered the root Stack's (empty) outputs already: register the exports now.
        stack_resource = get_root_resource()
        stack_resource._outputs_registered = False  # type: ignore[union-attr]
        stack_resource._finish()  # type: ignore[union-attr]

    _sync_await(run_pulumi_func(finish))
    return build_plan(stack, project, monitor.records, monitor.regions, monitor.outputs)


def build_plan(stack: str, project: str, records: Mapping[str, dict[str, Any]], regions: Mapping[str, str],
               outputs: Mapping[str, Any]) -> dict[str, Any]:
    resources = []
    stack_urn = ""
    for urn in sorted(records):
        record = dict(records[urn])
        provider = record.pop("provider")
        record["provider"] = {"urn": provider, "region": regions.get(provider, "")} if provider else None
        if record["type"] == STACK_TYPE:
            stack_urn = urn
        resources.append(record)
    return {"stack": stack, "project": project, "resources": resources, "outputs": outputs.get(stack_urn, {})}


def dumps(plan: Mapping[str, Any]) -> str:
    return json.dumps(plan, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def check_out_path(path: Path) -> None:
    """Refuse, before anything runs, an --out that names a folder or lies where this user cannot write."""
    hint = "give --out a file path in a folder you can write, e.g. --out out/plan.json"
    if path.is_dir():
        raise UserError(f"--out {path} is a folder, not a file", f"give a file path, e.g. --out {path / 'plan.json'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # write_plan creates the missing folders
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--out {path}: {folder} is not a folder", hint)
    try:  # a real probe: access(2) says yes to root even where nothing can be created (/proc, read-only mounts)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write in {folder}: {exc.strerror or exc}", hint) from None


def write_plan(plan: Mapping[str, Any], path: Path) -> None:
    """Write the plan atomically (a temporary file beside it, then a rename); on failure, nothing is left behind."""
    check_out_path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False, encoding="utf-8") as out:
            tmp = Path(out.name)
            out.write(dumps(plan))
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain write would leave it (NamedTemporaryFile makes 0600)
        tmp.replace(path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write the plan to {path}: {exc.strerror or exc}",
                        "give --out a file path in a folder you can write, e.g. --out out/plan.json") from None


def compute_plan(project_root: Path, stack: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The plan of PROJECT_ROOT's code and stack config, computed in a fresh process with ROOT/src first."""
    root = Path(project_root).resolve()
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), *filter(None, [child_env.get("PYTHONPATH")])])
    child_env.setdefault("PYTHONHASHSEED", "0")
    proc = subprocess.run([sys.executable, "-m", "embassy.plan", "--root", str(root), "--stack", stack],
                          cwd=root, env=child_env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        # Config errors print `error: <path>: …` lines: name them all, else the last line says most.
        errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        detail = "; ".join(errors) if errors else (lines[-1] if lines else f"exit {proc.returncode}")
        raise PlanFailed(f"planning stack '{stack}' of {root} failed: {detail}",
                         "run `python -m embassy.plan --root ROOT --stack S` there to see the whole error",
                         code=EXIT_USAGE)
    plan: dict[str, Any] = json.loads(proc.stdout)
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embassy.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--stack", required=True)
    parser.add_argument("--out", type=Path, help="write the plan here instead of stdout")
    opts = parser.parse_args(argv)
    try:
        if opts.out:
            check_out_path(opts.out)
        plan = run_program(opts.root, opts.stack)
        if opts.out:
            write_plan(plan, opts.out)
    except UserError as exc:  # ConfigInvalid too: every issue with its key path and hint
        print(exc.render(), file=sys.stderr)
        return exc.code
    if not opts.out:
        sys.stdout.write(dumps(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every hardening of the embassy components, asserted on the inputs the engine receives (the plan).

The plan is the program in stacks/ run under Pulumi's mocks (conftest.py); a test here goes red when
the hardening it names is removed from src/embassy/infra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embassy import model
from embassy.infra.iam import LOCK_ACTIONS

ROOT = Path(__file__).resolve().parents[2]
Plan = dict[str, Any]


def of_type(plan: Plan, typ: str) -> list[dict[str, Any]]:
    found = [r for r in plan["resources"] if r["type"] == typ]
    assert found, f"no {typ} in the plan"
    return found


def embassy_of(resource: dict[str, Any]) -> str:
    """The embassy a resource belongs to: the name of its regional provider (one per embassy)."""
    return str(resource["provider"]["urn"].rsplit("::", 1)[1])


def named(plan: Plan, typ: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in of_type(plan, typ) if r["name"] == name]
    return found


def statements(policy: str) -> list[dict[str, Any]]:
    doc = json.loads(policy)
    return list(doc["Statement"])


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        if value.startswith("{"):  # policies and provider tags are JSON documents inside strings
            yield from strings(json.loads(value))
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


@pytest.fixture(scope="module")
def dep() -> model.Deployment:
    return model.load_stack("rehearsal", ROOT)


# --------------------------------------------------------------------------- hosts


def test_imdsv2_required_with_hop_limit_1(rehearsal_plan: Plan) -> None:
    for host in of_type(rehearsal_plan, "aws:ec2/instance:Instance"):
        md = host["inputs"]["metadataOptions"]
        assert md["httpTokens"] == "required", host["urn"]
        assert md["httpPutResponseHopLimit"] == 1, host["urn"]


def test_hosts_have_no_public_ip(rehearsal_plan: Plan) -> None:
    for host in of_type(rehearsal_plan, "aws:ec2/instance:Instance"):
        assert host["inputs"]["associatePublicIpAddress"] is False, host["urn"]
    for subnet in of_type(rehearsal_plan, "aws:ec2/subnet:Subnet"):
        assert subnet["inputs"]["mapPublicIpOnLaunch"] is False, subnet["urn"]


def test_root_volumes_encrypted_with_the_embassy_key(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    outputs = rehearsal_plan["outputs"]["embassies"]
    hosts = of_type(rehearsal_plan, "aws:ec2/instance:Instance")
    assert len(hosts) == sum(e.host_count for e in dep.embassies)
    for host in hosts:
        root = host["inputs"]["rootBlockDevice"]
        assert root["encrypted"] is True, host["urn"]
        assert root["kmsKeyId"] == outputs[embassy_of(host)]["key_arn"], host["urn"]
        assert root["volumeSize"] == dep.embassy(embassy_of(host)).volume_size_gb


def test_hosts_use_ssm_instance_profile_and_debian_ami(rehearsal_plan: Plan) -> None:
    for host in of_type(rehearsal_plan, "aws:ec2/instance:Instance"):
        emb = embassy_of(host)
        profile = named(rehearsal_plan, "aws:iam/instanceProfile:InstanceProfile", f"{emb}-host")
        assert profile["urn"] in host["dependencies"]
        assert host["inputs"]["ami"].startswith("ami-")
    for attachment in of_type(rehearsal_plan, "aws:iam/rolePolicyAttachment:RolePolicyAttachment"):
        assert attachment["inputs"]["policyArn"] == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"


def test_nitro_enclaves_enabled_for_the_default_type(rehearsal_plan: Plan) -> None:
    for host in of_type(rehearsal_plan, "aws:ec2/instance:Instance"):
        assert host["inputs"]["instanceType"] == "m5.xlarge"
        assert host["inputs"]["enclaveOptions"] == {"enabled": True}


def test_no_open_cidr_anywhere(rehearsal_plan: Plan) -> None:
    opened = [r["urn"] for r in rehearsal_plan["resources"]
              if any(s in ("0.0.0.0/0", "::/0") for s in strings(r["inputs"]))]
    assert opened == []


def test_host_security_groups_admit_only_admin_cidrs_on_ssh(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    for emb in dep.embassies:
        group = named(rehearsal_plan, "aws:ec2/securityGroup:SecurityGroup", f"{emb.name}-hosts")["inputs"]
        assert [(r["fromPort"], r["toPort"], r["protocol"], r["cidrBlocks"]) for r in group["ingress"]] == [
            (22, 22, "tcp", [cidr]) for cidr in emb.admin_cidrs]
        for rule in group["egress"]:
            assert (rule["fromPort"], rule["toPort"]) == (443, 443)
            assert rule.get("cidrBlocks", ["10.64.0.0/16"]) == ["10.64.0.0/16"]
    assert dep.embassy("se").admin_cidrs and not dep.embassy("de").admin_cidrs  # both cases are exercised


# --------------------------------------------------------------------------- network


def test_no_internet_or_nat_gateway_and_no_routes_out(rehearsal_plan: Plan) -> None:
    types = {r["type"] for r in rehearsal_plan["resources"]}
    forbidden = {"aws:ec2/internetGateway:InternetGateway", "aws:ec2/natGateway:NatGateway",
                 "aws:ec2/egressOnlyInternetGateway:EgressOnlyInternetGateway", "aws:ec2/route:Route",
                 "aws:ec2/eip:Eip", "aws:ec2/internetGatewayAttachment:InternetGatewayAttachment"}
    assert types & forbidden == set()
    for table in of_type(rehearsal_plan, "aws:ec2/routeTable:RouteTable"):
        assert table["inputs"]["routes"] == [], table["urn"]


def test_private_subnets_in_at_least_two_zones(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    for emb in dep.embassies:
        zones = {s["inputs"]["availabilityZone"] for s in of_type(rehearsal_plan, "aws:ec2/subnet:Subnet")
                 if embassy_of(s) == emb.name}
        assert len(zones) >= 2 and all(z.startswith(emb.region) for z in zones)


def test_vpc_endpoints_for_every_service(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    for emb in dep.embassies:
        endpoints = {e["inputs"]["serviceName"].rsplit(".", 1)[1]: e["inputs"]
                     for e in of_type(rehearsal_plan, "aws:ec2/vpcEndpoint:VpcEndpoint") if embassy_of(e) == emb.name}
        assert set(endpoints) == {"s3", "kms", "ssm", "ssmmessages", "ec2messages", "logs"}
        assert endpoints["s3"]["vpcEndpointType"] == "Gateway"
        for service in ("kms", "ssm", "ssmmessages", "ec2messages", "logs"):
            assert endpoints[service]["vpcEndpointType"] == "Interface"
            assert endpoints[service]["privateDnsEnabled"] is True
        group = named(rehearsal_plan, "aws:ec2/securityGroup:SecurityGroup", f"{emb.name}-endpoints")["inputs"]
        assert [(r["fromPort"], r["toPort"], r["cidrBlocks"]) for r in group["ingress"]] == [(443, 443, ["10.64.0.0/16"])]


def test_default_security_group_is_emptied(rehearsal_plan: Plan) -> None:
    for group in of_type(rehearsal_plan, "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup"):
        assert group["inputs"]["ingress"] == [] and group["inputs"]["egress"] == []


def test_flow_logs_on_every_vpc_into_an_encrypted_group(rehearsal_plan: Plan) -> None:
    outputs = rehearsal_plan["outputs"]["embassies"]
    vpcs = of_type(rehearsal_plan, "aws:ec2/vpc:Vpc")
    logs = of_type(rehearsal_plan, "aws:ec2/flowLog:FlowLog")
    assert len(logs) == len(vpcs)
    for flow in logs:
        emb = embassy_of(flow)
        assert flow["inputs"]["trafficType"] == "ALL"
        assert flow["inputs"]["logDestinationType"] == "cloud-watch-logs"
        group = named(rehearsal_plan, "aws:cloudwatch/logGroup:LogGroup", f"{emb}-flow-logs")
        assert group["urn"] in flow["dependencies"]
        assert group["inputs"]["kmsKeyId"] == outputs[emb]["key_arn"]
        assert named(rehearsal_plan, "aws:ec2/vpc:Vpc", f"{emb}-vpc")["urn"] in flow["dependencies"]


# --------------------------------------------------------------------------- keys


def test_key_rotation_and_deletion_window(rehearsal_plan: Plan) -> None:
    keys = of_type(rehearsal_plan, "aws:kms/key:Key")
    assert len(keys) == 3
    for key in keys:
        assert key["inputs"]["enableKeyRotation"] is True, key["urn"]
        assert key["inputs"]["deletionWindowInDays"] == 30, key["urn"]
        assert key["retainOnDelete"] is True


def test_key_policy_names_only_home_principals_roles_and_services(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    outputs = rehearsal_plan["outputs"]["embassies"]
    for key in of_type(rehearsal_plan, "aws:kms/key:Key"):
        out = outputs[embassy_of(key)]
        allowed = {*dep.principals.key_admins, out["agent_role_arn"], out["restore_role_arn"], out["custody_role_arn"],
                   out["break_glass_role_arn"]}
        for st in statements(key["inputs"]["policy"]):
            assert st["Effect"] == "Allow"
            principal = st["Principal"]
            assert set(principal) <= {"AWS", "Service"}
            aws_principals = principal.get("AWS", [])
            assert set(aws_principals if isinstance(aws_principals, list) else [aws_principals]) <= allowed, st["Sid"]
            services = principal.get("Service", [])
            assert all(s.split(".")[0] in ("cloudtrail", "logs") for s in ([services] if isinstance(services, str) else services))
        admins = [st for st in statements(key["inputs"]["policy"]) if st.get("Action") == "kms:*"]
        assert [st["Principal"]["AWS"] for st in admins] == [sorted(dep.principals.key_admins)]
        assert ":root" not in key["inputs"]["policy"]


# --------------------------------------------------------------------------- vault and audit buckets


def buckets(plan: Plan) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in of_type(plan, "aws:s3/bucket:Bucket")}


def config_of(plan: Plan, typ: str, bucket_name: str) -> dict[str, Any]:
    """The bucket-level resource of `typ` for the bucket whose logical name is bucket_name."""
    bucket = buckets(plan)[bucket_name]
    (found,) = [r for r in of_type(plan, typ) if bucket["urn"] in r["dependencies"] and r["name"] == bucket_name]
    return found


def test_object_lock_compliance_with_the_embassy_retention(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    names = buckets(rehearsal_plan)
    assert set(names) == {f"{e.name}-{kind}" for e in dep.embassies for kind in ("vault", "audit-logs")}
    for name, bucket in names.items():
        assert bucket["inputs"]["objectLockEnabled"] is True, name
        lock = config_of(rehearsal_plan, "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", name)
        retention = lock["inputs"]["rule"]["defaultRetention"]
        assert retention["mode"] == "COMPLIANCE", name
        assert retention["days"] == dep.embassy(embassy_of(bucket)).retention_days, name
        versioning = config_of(rehearsal_plan, "aws:s3/bucketVersioning:BucketVersioning", name)
        assert versioning["inputs"]["versioningConfiguration"]["status"] == "Enabled"


def test_buckets_encrypted_with_the_embassy_key(rehearsal_plan: Plan) -> None:
    outputs = rehearsal_plan["outputs"]["embassies"]
    for name, bucket in buckets(rehearsal_plan).items():
        sse = config_of(rehearsal_plan, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                        name)
        (rule,) = sse["inputs"]["rules"]
        assert rule["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms",
                                                              "kmsMasterKeyId": outputs[embassy_of(bucket)]["key_arn"]}
        assert rule["bucketKeyEnabled"] is True


def test_public_access_blocked_on_every_bucket(rehearsal_plan: Plan) -> None:
    for name in buckets(rehearsal_plan):
        block = config_of(rehearsal_plan, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", name)["inputs"]
        for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"):
            assert block[flag] is True, (name, flag)


def test_locked_buckets_survive_destroy(rehearsal_plan: Plan) -> None:
    for name, bucket in buckets(rehearsal_plan).items():
        assert bucket["retainOnDelete"] is True, name
        for typ in ("aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration", "aws:s3/bucketPolicy:BucketPolicy",
                    "aws:s3/bucketVersioning:BucketVersioning", "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"):
            assert config_of(rehearsal_plan, typ, name)["retainOnDelete"] is True, (name, typ)


def test_every_bucket_policy_denies_plain_http(rehearsal_plan: Plan) -> None:
    for name in buckets(rehearsal_plan):
        policy = config_of(rehearsal_plan, "aws:s3/bucketPolicy:BucketPolicy", name)["inputs"]["policy"]
        denies = [st for st in statements(policy) if st["Effect"] == "Deny" and st["Principal"] == "*"
                  and st.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
        assert len(denies) == 1 and denies[0]["Action"] == "s3:*", name
        assert len(denies[0]["Resource"]) == 2


def test_vault_policy_denies_version_and_lock_changes_to_all_but_break_glass(rehearsal_plan: Plan,
                                                                             dep: model.Deployment) -> None:
    outputs = rehearsal_plan["outputs"]["embassies"]
    for emb in dep.embassies:
        policy = config_of(rehearsal_plan, "aws:s3/bucketPolicy:BucketPolicy", f"{emb.name}-vault")
        (deny,) = [st for st in statements(policy["inputs"]["policy"])
                   if st["Effect"] == "Deny" and "s3:DeleteObjectVersion" in st["Action"]]
        assert set(deny["Action"]) == set(LOCK_ACTIONS) == {
            "s3:DeleteObjectVersion", "s3:PutObjectRetention", "s3:PutObjectLegalHold",
            "s3:PutBucketObjectLockConfiguration", "s3:BypassGovernanceRetention"}
        assert deny["Principal"] == "*"
        assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": outputs[emb.name]["break_glass_role_arn"]}}
        # Created after the lock configuration, or the deployer itself would be refused.
        lock = config_of(rehearsal_plan, "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration",
                         f"{emb.name}-vault")
        assert lock["urn"] in policy["dependencies"]


def test_trail_validates_log_files_into_the_locked_log_bucket(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    outputs = rehearsal_plan["outputs"]["embassies"]
    trails = of_type(rehearsal_plan, "aws:cloudtrail/trail:Trail")
    assert len(trails) == len(dep.embassies)
    for trail in trails:
        emb = embassy_of(trail)
        inputs = trail["inputs"]
        assert inputs["enableLogFileValidation"] is True
        assert inputs["isMultiRegionTrail"] is False
        assert inputs["kmsKeyId"] == outputs[emb]["key_arn"]
        log_bucket = buckets(rehearsal_plan)[f"{emb}-audit-logs"]
        assert log_bucket["urn"] in trail["dependencies"]
        (selector,) = inputs["eventSelectors"]
        assert selector["dataResources"][0]["values"] == [outputs[emb]["vault_arn"] + "/"]
        policy = config_of(rehearsal_plan, "aws:s3/bucketPolicy:BucketPolicy", f"{emb}-audit-logs")
        sids = {st["Sid"] for st in statements(policy["inputs"]["policy"])}
        assert {"CloudTrailAclCheck", "CloudTrailWrite"} <= sids


# --------------------------------------------------------------------------- IAM


def role_policy(plan: Plan, name: str) -> list[dict[str, Any]]:
    return statements(named(plan, "aws:iam/rolePolicy:RolePolicy", name)["inputs"]["policy"])


def test_agent_writes_and_reads_but_never_destroys_or_unlocks(rehearsal_plan: Plan) -> None:
    for emb in ("de", "se", "ie"):
        sts = role_policy(rehearsal_plan, f"{emb}-agent-vault")
        allowed = {a for st in sts if st["Effect"] == "Allow" for a in st["Action"]}
        denied = {a for st in sts if st["Effect"] == "Deny" for a in st["Action"]}
        assert {"s3:PutObject", "s3:GetObject", "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"} <= allowed
        assert not allowed & {*LOCK_ACTIONS, "s3:DeleteObject", "s3:*", "kms:*"}
        assert set(LOCK_ACTIONS) <= denied


def test_restore_role_only_reads(rehearsal_plan: Plan) -> None:
    for emb in ("de", "se", "ie"):
        sts = role_policy(rehearsal_plan, f"{emb}-restore-vault")
        allowed = {a for st in sts if st["Effect"] == "Allow" for a in st["Action"]}
        assert allowed and all(a.startswith(("s3:Get", "s3:List", "kms:Decrypt", "kms:Describe")) for a in allowed)


def test_break_glass_trust_is_secret_and_others_trust_only_home_principals(rehearsal_plan: Plan,
                                                                           dep: model.Deployment) -> None:
    for emb in dep.embassies:
        glass = named(rehearsal_plan, "aws:iam/role:Role", f"{emb.name}-break-glass")
        assert glass["inputs"]["assumeRolePolicy"] == "[secret]"
        for role in ("agent", "restore"):
            (st,) = statements(named(rehearsal_plan, "aws:iam/role:Role", f"{emb.name}-{role}")["inputs"]["assumeRolePolicy"])
            assert st["Principal"] == {"AWS": sorted(dep.principals.key_admins)}


# --------------------------------------------------------------------------- placement and tags


def providers(plan: Plan) -> dict[str, dict[str, Any]]:
    return {p["urn"]: p for p in of_type(plan, "pulumi:providers:aws")}


@pytest.mark.parametrize("stack", ["rehearsal", "production"])
def test_every_resource_is_placed_in_its_embassys_nation(stack: str, request: pytest.FixtureRequest) -> None:
    plan: Plan = request.getfixturevalue(f"{stack}_plan")
    dep = model.load_stack(stack, ROOT)
    catalog = model.nations()
    by_urn = {r["urn"]: r for r in plan["resources"]}
    customs = [r for r in plan["resources"] if r["custom"] and not r["type"].startswith("pulumi:providers:")]
    assert len(customs) > 40 * len(dep.embassies)
    for resource in customs:
        assert resource["provider"], f"{resource['urn']} has no explicit provider"
        provider = by_urn[resource["provider"]["urn"]]
        emb = dep.embassy(provider["name"])
        region = resource["provider"]["region"]
        assert region == provider["inputs"]["region"] == emb.region
        assert catalog[emb.nation].partition_of(region) is not None, resource["urn"]
        # And the resource really is that embassy's: it sits under the same Embassy component.
        assert resource["urn"].split("::")[2].startswith("data-embassy:index:Embassy$")
        assert resource["name"].startswith(emb.name + "-")


def test_providers_tag_state_embassy_nation_classification(rehearsal_plan: Plan, dep: model.Deployment) -> None:
    found = providers(rehearsal_plan)
    assert len(found) == len(dep.embassies)
    for provider in found.values():
        emb = dep.embassy(provider["name"])
        tags = json.loads(provider["inputs"]["defaultTags"])["tags"]
        assert tags == {"data-embassy:stack": "rehearsal", "data-embassy:state": "EE", "data-embassy:embassy": emb.name,
                        "data-embassy:nation": emb.nation, "data-embassy:classification": dep.classification}


def test_production_uses_its_sizes_and_partitions(production_plan: Plan) -> None:
    dep = model.load_stack("production", ROOT)
    sovereign = dep.embassy("de-sovereign")
    hosts = [h for h in of_type(production_plan, "aws:ec2/instance:Instance") if h["name"].startswith("de-sovereign-")]
    assert len(hosts) == sovereign.host_count == 2
    assert {h["inputs"]["instanceType"] for h in hosts} == {"m6i.2xlarge"}
    assert all(h["inputs"]["enclaveOptions"] == {"enabled": True} for h in hosts)
    out = production_plan["outputs"]["embassies"]["de-sovereign"]
    assert out["key_arn"].startswith("arn:aws-eusc:kms:eusc-de-east-1:")
    attachments = [a for a in of_type(production_plan, "aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                   if a["name"].startswith("de-sovereign-")]
    assert [a["inputs"]["policyArn"] for a in attachments] == ["arn:aws-eusc:iam::aws:policy/AmazonSSMManagedInstanceCore"]
    retention = {dep.embassy(e).retention_days for e in ("jp",)}
    lock = [r for r in of_type(production_plan, "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration")
            if r["name"] == "jp-vault"]
    assert [r["inputs"]["rule"]["defaultRetention"]["days"] for r in lock] == sorted(retention) == [2555]

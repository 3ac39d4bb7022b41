"""The enclave hosts: private, IMDSv2-only, encrypted, reached through SSM, Nitro Enclaves where possible."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy.infra.iam import CREATE_ONLY_KEY, HOST_DENIED, HOST_READ_ACTIONS, HOST_RECORD_ACTIONS, RESTORE_TESTS_PREFIX
from embassy.infra.site import Site, policy_json, role_tag
from embassy.model import DEBIAN_RELEASES, DEFAULT_DEBIAN_RELEASE

DEBIAN_OWNER = "136693071363"  # the Debian cloud team's AWS account
# Families documented as Nitro Enclaves capable (x86, Intel/AMD) that we accept; sizes from xlarge up
# (an enclave needs >= 4 vCPUs on the parent). Anything else gets enclaves off, not a failed launch.
NITRO_ENCLAVE_FAMILIES = frozenset({"m5", "m5a", "m5n", "m6i", "m6a", "m7i", "c5", "c5a", "c6i", "c6a", "c7i",
                                    "r5", "r5a", "r6i", "r6a", "r7i"})
_SIZE = re.compile(r"^(\d*)xlarge$")


def nitro_enclaves_capable(instance_type: str) -> bool:
    """True for the families above at sizes xlarge, 2xlarge, … (not metal, not below xlarge)."""
    family, _, size = instance_type.partition(".")
    return family in NITRO_ENCLAVE_FAMILIES and _SIZE.match(size) is not None


def architecture(instance_type: str) -> str:
    """Graviton families carry a 'g' after the generation digit (m6g, c7gn); the rest are x86_64."""
    family = instance_type.partition(".")[0]
    return "arm64" if re.match(r"^[a-z]+\d+g", family) else "amd64"


def ami_name_filter(debian_release: int, arch: str) -> str:
    """The Debian cloud team's AMI names: debian-<major>-<arch>-<date>-<build> (e.g. debian-13-amd64-20260101-1)."""
    if debian_release not in DEBIAN_RELEASES:
        raise ValueError(f"debian_release {debian_release} is not one of {sorted(DEBIAN_RELEASES)}")
    return f"debian-{debian_release}-{arch}-*"


@dataclass(frozen=True)
class EnclaveArgs:
    site: Site
    subnets: Sequence[aws.ec2.Subnet]
    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    s3_prefix_list_id: pulumi.Input[str]
    key_arn: pulumi.Input[str]
    vault_arn: pulumi.Input[str] | None = None  # the embassy's own vault: the hosts may read it, nothing more
    debian_release: int = DEFAULT_DEBIAN_RELEASE  # the stack's `debian_release`: which Debian AMI the hosts boot


class Enclave(pulumi.ComponentResource):
    """`host_count` instances spread over the private subnets."""

    hosts: list[aws.ec2.Instance]
    role: aws.iam.Role

    def __init__(self, name: str, args: EnclaveArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:infra:Enclave", name, None, opts)
        site, emb = args.site, args.site.embassy
        child = pulumi.ResourceOptions(parent=self)

        role = aws.iam.Role(site.child("host"), description=f"enclave hosts of embassy {site.name}: SSM, read own vault",
                            opts=child,
                            tags=role_tag("host"),
                            assume_role_policy=policy_json({"Version": "2012-10-17", "Statement": [{
                                "Effect": "Allow", "Action": "sts:AssumeRole",
                                "Principal": {"Service": site.service_principal("ec2")}}]}))
        aws.iam.RolePolicyAttachment(site.child("host-ssm"), role=role.name, opts=child,
                                     policy_arn=f"arn:{site.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore")
        if args.vault_arn is not None:
            self._read_own_vault(site, role, args.vault_arn, args.key_arn, child)
        profile = aws.iam.InstanceProfile(site.child("host"), role=role.name, opts=child)

        ingress = [aws.ec2.SecurityGroupIngressArgs(
            protocol="tcp", from_port=22, to_port=22, description="SSH from the home state's admin network",
            cidr_blocks=[cidr] if ipaddress.ip_network(cidr).version == 4 else None,
            ipv6_cidr_blocks=[cidr] if ipaddress.ip_network(cidr).version == 6 else None)
            for cidr in emb.admin_cidrs]
        group = aws.ec2.SecurityGroup(
            site.child("hosts"), vpc_id=args.vpc_id,
            description="enclave hosts: SSH only from admin CIDRs; HTTPS to the VPC and S3",
            ingress=ingress,
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=443, to_port=443, cidr_blocks=[args.vpc_cidr],
                                                    description="HTTPS to the VPC endpoints"),
                    aws.ec2.SecurityGroupEgressArgs(protocol="tcp", from_port=443, to_port=443,
                                                    prefix_list_ids=[args.s3_prefix_list_id],
                                                    description="HTTPS to S3 (the vault) through the gateway endpoint")],
            opts=child)

        arch = architecture(emb.instance_type)
        ami = aws.ec2.get_ami_output(owners=[DEBIAN_OWNER], most_recent=True, opts=site.invoke_opts(), filters=[
            aws.ec2.GetAmiFilterArgs(name="name", values=[ami_name_filter(args.debian_release, arch)]),
            aws.ec2.GetAmiFilterArgs(name="architecture", values=["arm64" if arch == "arm64" else "x86_64"]),
            aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"])])

        self.hosts = []
        for index in range(emb.host_count):
            subnet = args.subnets[index % len(args.subnets)]
            self.hosts.append(aws.ec2.Instance(
                site.child(f"host-{index + 1}"),
                ami=ami.id,
                instance_type=emb.instance_type,
                subnet_id=subnet.id,
                vpc_security_group_ids=[group.id],
                iam_instance_profile=profile.name,
                associate_public_ip_address=False,
                ebs_optimized=True,
                monitoring=True,
                metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                    http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1,
                    instance_metadata_tags="disabled"),
                root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                    encrypted=True, kms_key_id=args.key_arn, volume_size=emb.volume_size_gb, volume_type="gp3",
                    delete_on_termination=True),
                enclave_options=aws.ec2.InstanceEnclaveOptionsArgs(enabled=nitro_enclaves_capable(emb.instance_type)),
                tags={"Name": f"{site.stack}-{site.name}-{index + 1}", **role_tag("host")},
                opts=child))
        self.role = role
        self.register_outputs({"instance_ids": [h.id for h in self.hosts],
                               "private_ips": [h.private_ip for h in self.hosts], "role_arn": role.arn})

    @staticmethod
    def _read_own_vault(site: Site, role: aws.iam.Role, vault_arn: pulumi.Input[str], key_arn: pulumi.Input[str],
                        child: pulumi.ResourceOptions) -> None:
        """Restore on the host and a warm standby's WAL replay read the embassy's own vault. One write: the host's
        scheduled restore test records its result under restore-tests/ (it runs there alone, with no controller),
        as a new object only: S3 refuses the put unless it carries If-None-Match (never a new version of an
        existing record), and every other write, delete and lock change is denied.

        The key's use comes by a KMS grant (Decrypt, and GenerateDataKey for the record the bucket's default SSE-KMS
        encrypts) rather than the key policy: the key exists before the host role does, and its policy names no
        principal of the host nation's account beyond the stack's roles."""
        bucket = pulumi.Output.from_input(vault_arn)
        vault = [bucket, bucket.apply(lambda arn: f"{arn}/*")]
        records = bucket.apply(lambda arn: f"{arn}/{RESTORE_TESTS_PREFIX}*")
        aws.iam.RolePolicy(site.child("host-vault-read"), role=role.id, opts=child, policy=policy_json({
            "Version": "2012-10-17", "Statement": [
                {"Sid": "ReadOwnVault", "Effect": "Allow", "Action": list(HOST_READ_ACTIONS), "Resource": vault},
                {"Sid": "RecordRestoreTests", "Effect": "Allow", "Action": list(HOST_RECORD_ACTIONS), "Resource": records},
                {"Sid": "DecryptWithEmbassyKey", "Effect": "Allow",
                 "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"], "Resource": key_arn},
                {"Sid": "NeverWriteDeleteOrUnlock", "Effect": "Deny", "Action": list(HOST_DENIED), "Resource": vault},
                {"Sid": "WriteOnlyRestoreTestRecords", "Effect": "Deny", "Action": list(HOST_RECORD_ACTIONS),
                 "NotResource": records},
                {"Sid": "NeverReplaceARecord", "Effect": "Deny", "Action": list(HOST_RECORD_ACTIONS), "Resource": records,
                 "Condition": {"Null": {CREATE_ONLY_KEY: "true"}}}]}))
        aws.kms.Grant(site.child("host-decrypt"), key_id=key_arn, grantee_principal=role.arn,
                      operations=["Decrypt", "DescribeKey", "GenerateDataKey"], opts=child)

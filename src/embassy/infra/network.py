"""The enclave network: private subnets only, no route to the internet, AWS services via endpoints."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy.infra.site import Site, policy_json, role_tag

VPC_CIDR = "10.64.0.0/16"
SUBNET_PREFIX = 20
MIN_ZONES = 2
MAX_ZONES = 3
# Interface endpoints that SSM Session Manager, KMS and CloudWatch Logs need with no internet route.
INTERFACE_SERVICES = ("kms", "ssm", "ssmmessages", "ec2messages", "logs")
FLOW_LOG_RETENTION_DAYS = 365


@dataclass(frozen=True)
class NetworkArgs:
    site: Site
    key_arn: pulumi.Input[str]  # encrypts the flow-log group
    cidr: str = VPC_CIDR


class Network(pulumi.ComponentResource):
    """VPC, private subnets in >= 2 zones, endpoints, flow logs. There is no internet or NAT gateway."""

    vpc: aws.ec2.Vpc
    subnets: list[aws.ec2.Subnet]
    cidr: str
    s3_prefix_list_id: pulumi.Output[str]  # S3 through the gateway endpoint: the hosts' only way out of the VPC

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:infra:Network", name, None, opts)
        site = args.site
        self.cidr = args.cidr
        child = pulumi.ResourceOptions(parent=self)
        zones = aws.get_availability_zones(state="available", opts=pulumi.InvokeOptions(provider=site.provider)).names
        if len(zones) < MIN_ZONES:
            raise ValueError(f"region {site.region} offers {len(zones)} availability zone(s); an embassy needs {MIN_ZONES}")

        self.vpc = aws.ec2.Vpc(site.child("vpc"), cidr_block=args.cidr, enable_dns_support=True,
                               enable_dns_hostnames=True, opts=child)
        # The default security group of a VPC allows all traffic between its members: empty it.
        aws.ec2.DefaultSecurityGroup(site.child("default-sg"), vpc_id=self.vpc.id, ingress=[], egress=[], opts=child)
        routes = aws.ec2.RouteTable(site.child("private"), vpc_id=self.vpc.id, routes=[], opts=child)

        blocks = ipaddress.ip_network(args.cidr).subnets(new_prefix=SUBNET_PREFIX)
        self.subnets = []
        for zone in sorted(zones)[:MAX_ZONES]:
            subnet = aws.ec2.Subnet(site.child(f"private-{zone}"), vpc_id=self.vpc.id, availability_zone=zone,
                                    cidr_block=str(next(blocks)), map_public_ip_on_launch=False, opts=child)
            aws.ec2.RouteTableAssociation(site.child(f"private-{zone}"), subnet_id=subnet.id, route_table_id=routes.id,
                                          opts=child)
            self.subnets.append(subnet)

        endpoint_sg = aws.ec2.SecurityGroup(
            site.child("endpoints"), vpc_id=self.vpc.id, description="AWS service endpoints: HTTPS from inside the VPC only",
            ingress=[aws.ec2.SecurityGroupIngressArgs(protocol="tcp", from_port=443, to_port=443, cidr_blocks=[args.cidr],
                                                      description="HTTPS from the enclave VPC")],
            egress=[], opts=child)
        s3 = aws.ec2.VpcEndpoint(site.child("s3"), vpc_id=self.vpc.id, vpc_endpoint_type="Gateway",
                                 service_name=self._service(site, "s3", "Gateway"), route_table_ids=[routes.id], opts=child)
        self.s3_prefix_list_id = s3.prefix_list_id
        for service in INTERFACE_SERVICES:
            aws.ec2.VpcEndpoint(site.child(service), vpc_id=self.vpc.id, vpc_endpoint_type="Interface",
                                service_name=self._service(site, service, "Interface"), private_dns_enabled=True,
                                subnet_ids=[s.id for s in self.subnets], security_group_ids=[endpoint_sg.id], opts=child)

        self._flow_logs(site, args.key_arn, child)
        self.register_outputs({"vpc_id": self.vpc.id, "subnet_ids": [s.id for s in self.subnets]})

    @staticmethod
    def _service(site: Site, service: str, kind: str) -> pulumi.Output[str]:
        """The endpoint service name as the region publishes it (partitions name them differently)."""
        found = aws.ec2.get_vpc_endpoint_service_output(service=service, service_type=kind, opts=site.invoke_opts())
        return found.service_name

    def _flow_logs(self, site: Site, key_arn: pulumi.Input[str], child: pulumi.ResourceOptions) -> None:
        """Every accepted and rejected flow into a KMS-encrypted log group."""
        group = aws.cloudwatch.LogGroup(site.child("flow-logs"), retention_in_days=FLOW_LOG_RETENTION_DAYS,
                                        kms_key_id=key_arn, opts=child)
        role = aws.iam.Role(site.child("flow-logs"), description=f"VPC flow logs of embassy {site.name}", opts=child,
                            tags=role_tag("flow-logs"),
                            assume_role_policy=policy_json({"Version": "2012-10-17", "Statement": [{
                                "Effect": "Allow", "Action": "sts:AssumeRole",
                                "Principal": {"Service": site.service_principal("vpc-flow-logs")},
                                "Condition": {"StringEquals": {"aws:SourceAccount": site.account_id}}}]}))
        aws.iam.RolePolicy(site.child("flow-logs"), role=role.id, opts=child, policy=policy_json({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogGroups", "logs:DescribeLogStreams"],
                "Resource": [group.arn, group.arn.apply(lambda arn: f"{arn}:*")]}]}))
        aws.ec2.FlowLog(site.child("flow-logs"), vpc_id=self.vpc.id, traffic_type="ALL",
                        log_destination_type="cloud-watch-logs", log_destination=group.arn, iam_role_arn=role.arn,
                        max_aggregation_interval=60, opts=child)

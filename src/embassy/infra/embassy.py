"""One embassy: its regional provider and every component, wired in the order the cloud needs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from embassy import model
from embassy.infra.audit import Audit, AuditArgs
from embassy.infra.enclave import Enclave, EnclaveArgs
from embassy.infra.iam import Grants, GrantsArgs, Roles, RolesArgs, custody_prefix
from embassy.infra.keys import Keys, KeysArgs
from embassy.infra.network import Network, NetworkArgs
from embassy.infra.site import Site, default_tags
from embassy.infra.vault import Vault, VaultArgs

# PostgreSQL's wal_retrieve_retry_interval (default 5 s): how long a standby waits before asking for the next segment.
WAL_RETRY_SECONDS = 5


def standby_lag_bound(dep: model.Deployment) -> int:
    """How far a warm standby replaying from its vault may trail home: a segment is archived at the latest after
    archive_timeout (the stack's cold_rpo_seconds), pushed in under a second, fetched at the next retry."""
    return dep.cold_rpo_seconds + 1 + WAL_RETRY_SECONDS


@dataclass(frozen=True)
class EmbassyArgs:
    deployment: model.Deployment
    embassy: model.Embassy
    break_glass_external_id: pulumi.Input[str]  # secret config value


class Embassy(pulumi.ComponentResource):
    """Network, key, vault, hosts, audit trail and roles of one embassy, all through one regional provider."""

    roles: Roles
    keys: Keys
    network: Network
    vault: Vault
    audit: Audit
    enclave: Enclave
    outputs: pulumi.Output[dict[str, object]]

    def __init__(self, name: str, args: EmbassyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("data-embassy:index:Embassy", name, None, opts)
        dep, emb = args.deployment, args.embassy
        principals = dep.principals
        if not principals.break_glass:
            raise ValueError("data-embassy:principals.break_glass is empty: name who may assume the break-glass role")
        provider = aws.Provider(emb.name, region=emb.region, opts=pulumi.ResourceOptions(parent=self),
                                default_tags=aws.ProviderDefaultTagsArgs(
                                    tags=default_tags(dep.stack, dep.state, emb, dep.classification)))
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(provider=provider)).account_id
        site = Site(stack=dep.stack, state=dep.state, embassy=emb, classification=dep.classification,
                    provider=provider, account_id=account)
        # Every child inherits the embassy's provider through its parent: nothing lands in another region.
        child = pulumi.ResourceOptions(parent=self, providers={"aws": provider})

        self.roles = roles = Roles(site.child("roles"), RolesArgs(
            site=site, agents=principals.agents or principals.key_admins,
            restorers=principals.restorers or principals.key_admins, break_glass=principals.break_glass,
            break_glass_external_id=args.break_glass_external_id, custodians=principals.key_admins), opts=child)
        self.keys = keys = Keys(site.child("keys"), KeysArgs(
            site=site, admins=principals.key_admins,
            users=[roles.agent.arn, roles.restore.arn, roles.custody.arn, roles.break_glass.arn]), opts=child)
        self.network = network = Network(site.child("network"), NetworkArgs(site=site, key_arn=keys.key.arn), opts=child)
        self.vault = vault = Vault(site.child("vault"), VaultArgs(
            site=site, key_arn=keys.key.arn, break_glass_arn=roles.break_glass.arn), opts=child)
        self.audit = Audit(site.child("audit"), AuditArgs(site=site, key_arn=keys.key.arn, vault_arn=vault.bucket.arn),
                           opts=child)
        Grants(site.child("grants"), GrantsArgs(site=site, roles=roles, vault_arn=vault.bucket.arn,
                                                key_arn=keys.key.arn), opts=child)
        self.enclave = enclave = Enclave(site.child("enclave"), EnclaveArgs(
            site=site, subnets=network.subnets, vpc_id=network.vpc.id, vpc_cidr=network.cidr,
            s3_prefix_list_id=network.s3_prefix_list_id, key_arn=keys.key.arn, vault_arn=vault.bucket.arn,
            debian_release=dep.debian_release), opts=child)

        self.outputs = pulumi.Output.from_input({
            "region": emb.region,
            "nation": emb.nation,
            "mode": emb.mode.value,
            "vault_bucket": vault.bucket.bucket,
            "vault_arn": vault.bucket.arn,
            "key_arn": keys.key.arn,
            "agent_role_arn": roles.agent.arn,
            "restore_role_arn": roles.restore.arn,
            "break_glass_role_arn": roles.break_glass.arn,
            "custody_role_arn": roles.custody.arn,
            "custody_prefix": custody_prefix(dep.stack),
            # Warm standbys on AWS replay WAL from their own vault (the host role reads it): no path home.
            **({"standby": {"source": "vault", "lag_bound_seconds": standby_lag_bound(dep)}}
               if emb.mode is model.Mode.WARM else {}),
            "host_instance_ids": [h.id for h in enclave.hosts],
            "host_private_ips": [h.private_ip for h in enclave.hosts],
        })
        self.register_outputs({"embassy": self.outputs})

"""The data-embassy CrossGuard policy pack: `pulumi preview --policy-pack policies`.

The policies come from the one controls catalog (src/embassy/compliance/catalog.yaml); see
embassy.compliance.crossguard for how a mandatory control treats values unknown at preview.
Never import this file from tests: constructing a PolicyPack starts a gRPC server and blocks.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from embassy.compliance.crossguard import PACK_NAME, policies

PolicyPack(
    name=PACK_NAME,
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policies(),
    description="Data embassy controls: encryption with the embassy's own key, immutability, placement, exposure, audit.",
)

"""The data-embassy Pulumi program: `pulumi up` runs this; `embassy plan` runs it under Pulumi's mocks.

Thin on purpose: the model validates the stack config once, the components in embassy.infra build.
"""

import pulumi

from embassy import model
from embassy.infra import Embassy, EmbassyArgs

config = pulumi.Config(model.NAMESPACE)


def config_value(key: str) -> object:
    """Structured values arrive as JSON, plain strings (e.g. `classification: secret`) as they are."""
    try:
        return config.get_object(key)
    except pulumi.ConfigTypeError:
        return config.get(key)


dep = model.from_pulumi_config(pulumi.get_stack(), config_value)
external_id = config.get_secret("break_glass_external_id")
if external_id is None:
    raise pulumi.RunError("data-embassy:break_glass_external_id is not set; "
                          "HINT: pulumi config set --secret data-embassy:break_glass_external_id <random string>")

embassies = {emb.name: Embassy(emb.name, EmbassyArgs(deployment=dep, embassy=emb, break_glass_external_id=external_id))
             for emb in dep.embassies}

pulumi.export("stack", dep.stack)
pulumi.export("state", {"name": dep.state.name, "code": dep.state.code})
pulumi.export("embassies", {name: e.outputs for name, e in embassies.items()})

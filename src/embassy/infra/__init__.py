"""Pulumi ComponentResources of one data embassy: network, keys, vault, enclave, audit, IAM.

`Embassy` (embassy.py) composes them; stacks/__main__.py builds one per embassy of the model.
"""

from embassy.infra.embassy import Embassy, EmbassyArgs

__all__ = ["Embassy", "EmbassyArgs"]

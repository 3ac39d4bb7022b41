"""The replication agents on home: pgBackRest (one encrypted repo per embassy, async WAL archiving to
all of them), restic (one repository per file register and embassy), signed manifests per round,
the heartbeat and the metrics of lag (src/embassy/replication/deploy_home.py).

    pyinfra inventories/lab.py deploys/home_state.py deploys/agent.py

Secrets (cipher passphrases, restic keys, vault credentials) come from the controller's secrets folder
and the vault credential files the inventory names; on home they are 0600, owned by postgres or root.
The manifest key is created on home and never leaves it.
"""

from pyinfra import host

from embassy.replication.deploy_home import home_agent

if host.data.get("role") == "home":
    home_agent()

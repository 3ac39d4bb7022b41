"""pyinfra inventory of a site: a host nation's own data centre, from a site inventory (src/embassy/sites.py).

    EMBASSY_STACK=production EMBASSY_SITE_INVENTORY=examples/sites/federation.yaml \
        pyinfra inventories/site.py deploys/home_state.py deploys/agent.py

`embassy deploy --target site --inventory FILE` sets both (and runs pyinfra in the inventory's netns, if it names
one). Hosts are reached over SSH exactly as the inventory says (src/embassy/site_pyinfra.py): address, port,
user, key, pinned host keys, a jump host only where it names one; never through ~/.ssh/config or the lab's.
Groups: home, embassies, warm, cold; host data as in inventories/lab.py (role, embassy, mode, stack, vaults).
"""

from __future__ import annotations

from embassy import site_pyinfra as _site

_groups = _site.from_env()
home = _groups["home"]
embassies = _groups["embassies"]
warm = _groups["warm"]
cold = _groups["cold"]

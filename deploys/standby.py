"""Every embassy host: PostgreSQL (its Debian release's major), pgBackRest, restic and the restore tooling,
reading only that embassy's vault with its read-only identity; warm embassies also run a streaming standby of home
(src/embassy/replication/deploy_embassy.py).

    pyinfra inventories/lab.py deploys/home_state.py deploys/agent.py    (first: home)
    pyinfra inventories/lab.py deploys/standby.py                            (then the embassies)
"""

from pyinfra import host

from embassy.replication.deploy_embassy import embassy_host

if host.data.get("role") == "embassy":
    embassy_host()

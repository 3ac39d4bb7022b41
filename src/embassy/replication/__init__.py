"""The replication data plane: pgBackRest/restic configuration, secrets, signed hash-chained
manifests, register digests, lag, and verification.

Some modules run on the hosts as well as on the controller (manifest, digest, keys, round, lag,
heartbeat, monitor): they use only the standard library, `cryptography`, `psycopg`, `boto3` and
`prometheus_client` (all Debian packages on the hosts) and import each other relatively, so that
the deploys can upload this folder as the package `replication` to /opt/embassy.
"""

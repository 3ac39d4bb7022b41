"""The home state for rehearsals: register schemas, a seeded synthetic data generator, the file
registers as document trees, and a small read-only state service that answers register queries.

`service.py` runs on the hosts with only what Debian ships (python3 stdlib + python3-psycopg); it
must not import anything else from this package.
"""

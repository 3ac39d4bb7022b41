"""CLI commands, one module per area; each registers its commands on `embassy.cli.app`."""

"""CLI commands, one module per area; each registers its commands on `embassy.commands.common.app` (cli imports them)."""

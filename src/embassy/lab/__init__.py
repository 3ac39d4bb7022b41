"""The local target: network namespaces, systemd-nspawn hosts, SeaweedFS vaults, a package mirror."""

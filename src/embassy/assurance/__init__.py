"""Continuous assurance: restore tests at the embassies and the status that reads their signed records."""

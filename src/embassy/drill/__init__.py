"""Reboot the state: the restore plan and steps, their measurements, and the reports for auditors."""

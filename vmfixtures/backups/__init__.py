"""Backups: folder snapshots (rsync), retention."""

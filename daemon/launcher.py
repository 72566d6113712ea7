"""Kept so that agents written against ``persist.daemon.launcher`` keep working: see ``persist.agent``."""

from persist.agent.launcher import DaemonStartError, Handle, ensure_daemon

__all__ = ["DaemonStartError", "Handle", "ensure_daemon"]

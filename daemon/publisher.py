"""Kept so that agents written against ``persist.daemon.publisher`` keep working: see ``persist.agent``."""

from persist.agent.publisher import DEFAULT_ENDPOINT, NoSubscriber, Publisher, Undelivered

__all__ = ["DEFAULT_ENDPOINT", "NoSubscriber", "Publisher", "Undelivered"]

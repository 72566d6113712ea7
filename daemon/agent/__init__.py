"""What runs inside an agent: ``from persist.agent import Publisher, ensure_daemon``.

``ensure_daemon`` makes sure a daemon records the log dir (starting one,
exactly once, if none does) and registers the agent; ``Publisher`` puts its
messages on the bus, stamped and acknowledged, so none is lost unsaid.
"""

from persist.agent.launcher import DaemonStartError, Handle, ensure_daemon
from persist.agent.publisher import NoSubscriber, Publisher, Undelivered

__all__ = ["DaemonStartError", "Handle", "NoSubscriber", "Publisher", "Undelivered", "ensure_daemon"]

"""The code's rooms: what agents import keeps working, and each room stays on its side."""

from __future__ import annotations

import subprocess
import sys


def test_agents_import_from_persist_agent_and_the_old_paths_still_work():
    import persist.agent as agent
    from persist.daemon.launcher import DaemonStartError, ensure_daemon
    from persist.daemon.publisher import NoSubscriber, Publisher, Undelivered

    assert (agent.ensure_daemon, agent.DaemonStartError) == (ensure_daemon, DaemonStartError)
    assert (agent.Publisher, agent.NoSubscriber, agent.Undelivered) == (Publisher, NoSubscriber, Undelivered)


def test_an_agent_imports_neither_the_recorder_nor_the_index():
    """``from persist.agent import Publisher`` in an agent pulls in no recorder, index or CLI code."""
    code = ("import sys; from persist.agent import Publisher, ensure_daemon; "
            "print(' '.join(m for m in sys.modules if m.startswith(('persist.daemon.index', 'persist.cli', "
            "'persist.daemon.loop', 'persist.daemon.bus', 'persist.daemon.enrich'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_the_format_library_never_reaches_into_the_recorder():
    """``persist.daemon.log`` is shared by every piece: it imports nothing of the recorder, index, agent or CLI."""
    code = ("import sys, pkgutil, importlib, persist.daemon.log as lib; "
            "[importlib.import_module('persist.daemon.log.' + m.name) for m in pkgutil.iter_modules(lib.__path__)]; "
            "print(' '.join(m for m in sys.modules if m.startswith('persist.') and not m.startswith("
            "'persist.daemon.log') and m != 'persist.daemon'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""

"""persist.daemon: the writer side of persist.

The path of one message, top to bottom:
``bus`` (receive) → ``enrich`` (meta) → ``record`` (one JSON line) →
``store`` (append, commit, rotate) — driven by the loop in ``loop``.
``reader`` is the read side of the same format; ``config`` and ``logs``
set everything up; ``main`` is the ``persist-daemon`` entry point.
"""

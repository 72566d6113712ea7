"""The format library: everything that reads or writes a log directory's files, and nothing else.

``layout`` (where each file lives) · ``record`` (a message ⇄ one JSON line) ·
``store`` (append, commit, rotate, repair) · ``reader`` (the one read path and
the one segment resolver, safe against rotation) and ``entry`` (what it hands
out) · ``follow`` · ``select`` (filters, a conversation up to a checkpoint, a
token budget) · ``stats`` (counts, disk use, a status summary) · ``times``
(ISO times, ``--since`` values) · ``checkpoints`` · ``retention`` · ``restore``
· ``verify`` · ``render`` (records as text, export) · ``agents`` (presence
files) · ``fsutil`` and ``lock`` (safe opens, write-all, atomic replace,
flocks). Shared by the recorder, the indexer and every command; it never
opens a socket.
"""

"""The format library: everything that reads or writes a log directory's files, and nothing else.

``layout`` (where each file lives) · ``record`` (a message ⇄ one JSON line) ·
``store`` (append, commit, rotate, repair) · ``reader`` (the one read path and
the one segment resolver, safe against rotation) · ``follow`` · ``checkpoints``
· ``retention`` · ``restore`` · ``verify`` · ``render`` (records as text) ·
``agents`` (presence files) · ``fsutil`` and ``lock`` (safe opens, atomic
replace, flocks). Shared by the recorder, the indexer and every command; it
never opens a socket.
"""

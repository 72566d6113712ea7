"""``persist-cli web``: a read-only web page over a log dir, served by the process itself.

One module per responsibility, each a thin skin over the format library and the index (the page shows
exactly what the CLI shows, through the same functions):

* ``command``  the click command: options, loopback and token rules, the socket, uvicorn
* ``app``      the Starlette application: routes, templates, static files, the guard
* ``guard``    what every request passes: GET only, the right Host, the token
* ``source``   ``Source``, what every page asks; ``LogSource``, the log dir (the index opened for reading,
  records by seq)
* ``archive_source``  ``ArchiveSource``: the PostgreSQL archive, every node (``--archive URL``), read-only
* ``tail``     one thread following the source (the log, or the archive's position table), handing each new
  record to every live page
* ``show``     how one record is shown (time, speaker, text, colour), shared by every page
* ``svg``      plain SVG: the rate sparkline, the who-talks-to-whom graph, the time axis
* ``live``, ``threads``, ``search``, ``message``, ``agents``, ``timeline``: one page each

The server never writes the log, never takes the daemon's lock and has no write endpoint; like
``persist-cli search`` it may bring the derived search index up to date when no indexer is at work.
"""

"""persist.cli: ``persist-cli``, a thin click skin over ``persist.daemon``'s format library."""

"""``python -m persist.daemon``: the same as ``persist-daemon``."""

from persist.daemon.main import main

main()

"""Run at start-up of every Python process of a test run (``PYTHONPATH``): guard sockets."""

import os

if os.environ.get("FEDGE_NETGUARD_LOG"):
    import fedge_netguard

    fedge_netguard.install()

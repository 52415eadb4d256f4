"""This process's own figures that more than one party reads: its resident memory (the node's metrics,
the coordinator's garbage-collection rule)."""

import os
import resource


def resident_bytes() -> int:
    """This process's resident memory (Linux; elsewhere its peak, which getrusage reports)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

"""Room for the descriptors a run needs. Every probe attached is a descriptor (a
perf event or a link) and, without a shared program, so is every program: a
thousand kernel functions pass the usual soft limit of 1024, where the kernel
answered "Too many open files" half way through attaching."""
from __future__ import annotations

import os
import resource

from bpfprobes.base.errors import KernelError

MARGIN = 64                 # beside what is counted: maps, rings, the exporter's sockets


def open_now() -> int:
    """Descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def ensure(more: int) -> int:
    """Raise the soft RLIMIT_NOFILE so that `more` descriptors fit beside those
    open now: toward the hard limit, and past it where the process may (root,
    CAP_SYS_RESOURCE, up to fs.nr_open). Returns the soft limit in force;
    KernelError (one line) when there cannot be room."""
    want = open_now() + more + MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError) as e:
        raise KernelError(f"{more} more descriptors are needed and the hard limit of open "
                          f"files is {hard}", f"raise it (ulimit -Hn {want}), or fewer "
                          "targets") from e
    return want

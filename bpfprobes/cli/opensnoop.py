"""opensnoop's command line (tools/opensnoop.py does the work)."""
from __future__ import annotations

import sys
from typing import Sequence

from bpfprobes.kernel import policy
from bpfprobes.tools import opensnoop
from . import common

EXAMPLES = """\
    opensnoop                    # trace all open() syscalls
    opensnoop -T -U              # with a timestamp and the UID
    opensnoop -x                 # only failed opens
    opensnoop -p 181             # only PID 181
    opensnoop -n nginx           # only processes whose name contains "nginx"
    opensnoop -e -f O_WRONLY     # writers only, with flags and mode
    opensnoop -F                 # relative paths made absolute (cwd, or openat's dirfd)
    opensnoop --cgroup /sys/fs/cgroup/system.slice/ssh.service
    opensnoop --json -d 10       # JSON lines for 10 seconds
    opensnoop --rate-limit 1000  # at most 1000 events/s; the rest counted as throttled
    opensnoop -v --attach tracepoint
"""


def build_parser() -> common.Parser:
    p = common.parser("opensnoop", "Trace open(), openat() and openat2() syscalls.", EXAMPLES)
    p.add_argument("-T", "--timestamp", action="store_true", help="include a timestamp column")
    p.add_argument("-U", "--print-uid", action="store_true", help="include a UID column")
    p.add_argument("-x", "--failed", action="store_true", help="only show failed opens")
    p.add_argument("-p", "--pid", type=common.pid_arg, help="trace this PID only")
    p.add_argument("-t", "--tid", type=common.pid_arg, help="trace this TID only")
    p.add_argument("-u", "--uid", type=common.uid_arg, help="trace this UID only")
    p.add_argument("-n", "--name", help="only processes whose name contains NAME")
    p.add_argument("-e", "--extended-fields", action="store_true", help="show flags and mode")
    p.add_argument("-F", "--full-path", action="store_true",
                   help="relative paths made absolute, in the kernel: from the task's cwd, "
                        "or from the directory openat's dirfd is open on")
    p.add_argument("-f", "--flag-filter", action="append", default=[], metavar="FLAG",
                   help="only opens with this flag (e.g. O_WRONLY); repeatable, any matches")
    p.add_argument("--cgroup", metavar="PATH", help="trace this cgroup v2 only (in the kernel)")
    p.add_argument("--attach", choices=policy.CHOICES,
                   help="force kprobes or tracepoints (default: kprobes where available)")
    p.add_argument("--perf-buffer", action="store_true",
                   help="send events through a perf buffer even where the kernel has a BPF "
                        "ring buffer (the default there: cheaper per event)")
    common.add_session_options(p)
    return p


def run(argv: Sequence[str]) -> int:
    return opensnoop.run(common.options(build_parser().parse_args(argv), opensnoop.Options))


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("opensnoop", run, argv)


if __name__ == "__main__":
    sys.exit(main())

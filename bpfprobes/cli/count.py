"""`bpfprobes count`'s command line (tools/count.py does the work)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from bpfprobes.plan import countplan
from bpfprobes.tools import count
from bpfprobes.tools.count import BY, PROG
from . import common

EXAMPLES = """\
    bpfprobes count 'vfs_*'                      # kernel functions: calls until Ctrl-C
    bpfprobes count -i 1 'tcp_send*'             # a table every second
    bpfprobes count --by comm 'vfs_read' 'vfs_write'   # by process name
    bpfprobes count -p 1234 --by pid 't:syscalls:sys_enter_*'
    bpfprobes count 'p:/lib/x86_64-linux-gnu/libc.so.6:malloc' -d 5
    bpfprobes count -p 1234 'libc:*alloc' 'p:./a.out:work*'   # by name; a relative path
    bpfprobes count 'u:/usr/bin/python3.11:python:*'   # USDT probes, every site of each
    bpfprobes count --force --limit 5000 'ext4_*'    # more targets than the default limit
    bpfprobes count --json -d 10 't:sched:sched_*'
    bpfprobes count --prometheus 127.0.0.1:9435 --by comm 't:syscalls:sys_enter_openat'
    bpfprobes probe --count 'p:do_sys_openat2' 'r:do_sys_openat2'   # the same for probe specs
"""


def build_parser() -> common.Parser:
    p = common.parser(PROG, "Count calls of kernel functions, tracepoints and user functions "
                      "in the kernel.", EXAMPLES)
    p.add_argument("patterns", nargs="+", metavar="PATTERN",
                   help="FUNC (wildcards * ?), MOD:FUNC, t:CAT:EVENT, p:PATH:FUNC, "
                        "p:NAME:FUNC (a program or library by name: bash:read*, libc:malloc), "
                        "or u:BINARY:[PROVIDER:]NAME (USDT probes)")
    add_count_options(p)
    p.add_argument("-p", "--pid", type=common.pid_arg, help="only this process")
    p.add_argument("-d", "--duration", type=common.seconds_arg, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="JSON lines (meta, interval, summary)")
    p.add_argument("--limit", type=common.count_arg, default=countplan.DEFAULT_LIMIT,
                   metavar="N", help=f"most targets a pattern may attach (default "
                                     f"{countplan.DEFAULT_LIMIT})")
    p.add_argument("--force", action="store_true", help="attach more than --limit targets")
    p.add_argument("-v", "--verbose", action="store_true", help="list what is attached")
    p.add_argument("--prometheus", type=common.listen_arg, metavar="ADDR:PORT",
                   help="also serve the counts at http://ADDR:PORT/metrics for Prometheus "
                        "(bpfprobes_calls_total)")
    return p


def add_count_options(p: argparse.ArgumentParser) -> None:
    """Options `probe --count` shares."""
    p.add_argument("--by", choices=sorted(BY), help="count per process id and/or name too")
    p.add_argument("-i", "--interval", type=common.seconds_arg, metavar="SECONDS",
                   help="print the counts of each interval")


def run(argv: Sequence[str]) -> int:
    return count.run(common.options(build_parser().parse_args(argv), count.Options))


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""`bpfprobes serve`'s command line (tools/serve.py does the work)."""
from __future__ import annotations

import sys
from typing import Sequence

from bpfprobes.tools import serve
from . import common

EXAMPLES = """\
    bpfprobes serve tools/session.example.toml          # /metrics on the file's listen
    bpfprobes serve --listen 127.0.0.1:9500 my.toml     # another address
    bpfprobes serve -d 60 my.toml                       # a minute, then detach
    kill -HUP $(pgrep -f 'bpfprobes serve')             # re-read the file
    curl -s http://127.0.0.1:9435/metrics | grep '^bpfprobes_'
"""


def build_parser() -> common.Parser:
    p = common.parser(serve.PROG, "Count in the kernel what a session file declares and "
                      "serve it at /metrics for Prometheus (SIGHUP re-reads the file).",
                      EXAMPLES)
    p.add_argument("file", metavar="SESSION.toml", help="the session file (TOML)")
    p.add_argument("--listen", type=common.listen_arg, metavar="ADDR:PORT",
                   help="serve here instead of the file's listen (default 127.0.0.1:9435)")
    p.add_argument("-d", "--duration", type=common.seconds_arg, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="list what is attached")
    return p


def run(argv: Sequence[str]) -> int:
    return serve.run(common.options(build_parser().parse_args(argv), serve.Options))


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(serve.PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())

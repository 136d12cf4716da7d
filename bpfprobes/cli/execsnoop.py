"""execsnoop's command line (tools/execsnoop.py does the work)."""
from __future__ import annotations

import argparse
import pwd
import re
import sys
from typing import Sequence

from bpfprobes.kernel import policy
from bpfprobes.tools import execsnoop
from . import common

EXAMPLES = """\
    execsnoop                    # trace all exec() syscalls (execve and execveat)
    execsnoop -x                 # include failed exec()s
    execsnoop -T -U              # with a time (HH:MM:SS) and UID column
    execsnoop -t                 # with seconds since execsnoop started
    execsnoop -q                 # "quote" every argument
    execsnoop -n '^(sh|bash)$'   # only programs whose name matches a regex
    execsnoop -l 'tpkg'          # only command lines matching a regex
    execsnoop -u www-data        # only this user (a name or a UID)
    execsnoop -P 1234            # only children of PID 1234
    execsnoop --max-args 60      # show up to 60 arguments (default 20)
    execsnoop --json -d 10       # JSON lines for 10 seconds
    execsnoop --rate-limit 50/cpu   # at most 50 events/s per CPU; the rest counted
    execsnoop -v --attach tracepoint
"""


def _max_args(text: str) -> int:
    value = common.count_arg(text)
    if value > execsnoop.MAX_ARGS_LIMIT:
        raise argparse.ArgumentTypeError(
            f"--max-args must be at most {execsnoop.MAX_ARGS_LIMIT}, not {value}")
    return value


def _regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"bad regular expression {common.shown(text)}: {e}")
    except (OverflowError, RecursionError) as e:     # a{99999999999}; parentheses 1000 deep
        raise argparse.ArgumentTypeError(
            f"regular expression {common.shown(text)} is too large: {e}")


def _user(text: str) -> int:
    """A user name or a numeric UID, as BCC's -u takes it."""
    if text.isascii() and text.isdigit():      # not int('²'), which isdigit() too
        return common.uid_arg(str(int(text)))      # 007 is 7, not octal
    try:
        return pwd.getpwnam(text).pw_uid
    except (KeyError, ValueError):                 # ValueError: a NUL or a surrogate
        raise argparse.ArgumentTypeError(f"no such user {common.shown(text)}")


def build_parser() -> common.Parser:
    p = common.parser("execsnoop", "Trace execve() and execveat() syscalls, with arguments.",
                      EXAMPLES)
    p.add_argument("-T", "--time", action="store_true", help="include a time column (HH:MM:SS)")
    p.add_argument("-t", "--timestamp", action="store_true",
                   help="include a column of seconds since execsnoop started")
    p.add_argument("-x", "--fails", action="store_true", help="include failed exec()s")
    p.add_argument("-q", "--quote", action="store_true",
                   help='put "quotemarks" around arguments (\\ and " escaped)')
    p.add_argument("-n", "--name", type=_regex, metavar="NAME",
                   help="only programs whose name (comm) matches this regex")
    p.add_argument("-l", "--line", type=_regex, metavar="LINE",
                   help="only command lines (arguments joined by spaces) matching this regex")
    p.add_argument("-U", "--print-uid", action="store_true", help="include a UID column")
    p.add_argument("-u", "--uid", type=_user, metavar="USER",
                   help="trace this user only (name or UID)")
    p.add_argument("-P", "--ppid", type=common.pid_arg, help="trace children of this PID only")
    p.add_argument("--max-args", type=_max_args, default=execsnoop.DEFAULT_MAX_ARGS, metavar="N",
                   help=f"arguments to capture and show (default {execsnoop.DEFAULT_MAX_ARGS})")
    p.add_argument("--attach", choices=policy.CHOICES,
                   help="force kprobes or tracepoints (default: kprobes where available)")
    common.add_session_options(p)
    return p


def run(argv: Sequence[str]) -> int:
    return execsnoop.run(common.options(build_parser().parse_args(argv), execsnoop.Options))


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("execsnoop", run, argv)


if __name__ == "__main__":
    sys.exit(main())

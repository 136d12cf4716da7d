"""What every tool shares: argument types, error printing, the run pipeline."""
from __future__ import annotations

import argparse
import dataclasses
import mmap
import os
import re
import sys
from typing import Callable, Sequence, TypeVar

from bpfprobes.backends.bpf import loader, perfbuffer
from bpfprobes.base import signals
from bpfprobes.base.errors import BpfprobesError, UsageError
from bpfprobes.base.safetext import for_terminal, write_line
from bpfprobes.gen import codegen
from bpfprobes.kernel.running import TASK_COMM_LEN as COMM_SIZE
from bpfprobes.plan.runconfig import RateLimit


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (`TOOL: error: ...`), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message, f"see {self.prog} --help")


def parser(prog: str, description: str, examples: str) -> Parser:
    return Parser(prog=prog, description=description, epilog="examples:\n" + examples,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def shown(text: str, most: int = 40) -> str:
    """User input quoted for a one-line message: escaped, and cut if long."""
    cut = text if len(text) <= most else text[:most] + "..."
    return "'" + for_terminal(cut).replace("'", "\\'") + "'"


# the forms a number is taken in (ASCII blanks around are harmless: a quoted " 5 ")
_ASCII_INT = re.compile(r"[ \t]*[+-]?(?:0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|[0-9]+)[ \t]*")
_ASCII_SECONDS = re.compile(r"[ \t]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t]*")


def int_type(minimum: int, what: str, maximum: int | None = None,
             why: str = "") -> Callable[[str], int]:
    """A whole number (decimal, 0x, 0o, 0b) in [minimum, maximum]; `why` says where
    the maximum comes from."""
    def parse(text: str) -> int:
        try:
            # ASCII only: int() also reads other scripts' digits, "_" and spaces
            if not _ASCII_INT.fullmatch(text):
                raise ValueError(text)
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, not {shown(text)}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, "
                                             f"not {shown(text)}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{what} must be at most {maximum}{why}, "
                                             f"not {shown(text)}")
        return value
    return parse


# the kernel's bounds: PID_MAX_LIMIT (pid_max can be set no higher), uid_t with
# (uid_t)-1 meaning "no user"; beyond them a filter would compare truncated values.
# Every number has a bound: one of 5,000 hex digits has no decimal text to print.
PID_MAX = 4 * 1024 * 1024 - 1
UID_MAX = 2**32 - 2
pid_arg = int_type(1, "a PID", PID_MAX, " (the kernel's PID_MAX_LIMIT)")
count_arg = int_type(1, "a count", 2**63 - 1, " (64 bits)")
uid_arg = int_type(0, "a UID", UID_MAX, " (uid_t)")

# -d/-i: the run loop's timers count whole milliseconds; inf, nan and 1e300 are
# not durations (without -d a tool runs until stopped)
MIN_SECONDS = 0.001
MAX_SECONDS = 366 * 24 * 3600


def seconds_arg(text: str) -> float:
    try:
        # a plain ASCII decimal: float() also reads 1e3, inf, "_", other scripts' digits
        if not _ASCII_SECONDS.fullmatch(text):
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a duration must be a number of seconds, not {shown(text)}")
    if not MIN_SECONDS <= value <= MAX_SECONDS:          # nan fails both comparisons
        raise argparse.ArgumentTypeError(
            f"a duration must be {MIN_SECONDS} to {MAX_SECONDS} seconds (a year), "
            f"not {shown(text)}")
    return value


# perf/ring buffer pages per CPU: 2^16 is 256 MiB a CPU with 4 KiB pages; beyond,
# the kernel refuses the ring (or it takes the machine's memory)
MAX_PAGES = 2**16


def pages_arg(text: str) -> int:
    value = int_type(1, "--buffer-pages", MAX_PAGES,
                     f" ({MAX_PAGES * mmap.PAGESIZE >> 20} MiB per CPU)")(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"--buffer-pages must be a power of two, not {value}")
    return value


def comm_arg(text: str) -> str:
    """A task name compared byte for byte with the kernel's: the bytes given (argv's
    undecodable bytes included, as surrogate escapes), 1 to 15 of them (TASK_COMM_LEN
    with its NUL). Longer is refused, not cut: the kernel cuts a longer name at 15
    bytes, even inside a UTF-8 character, and the hint shows what it keeps."""
    raw = codegen.text_bytes(text)              # the bytes codegen compares
    if not 0 < len(raw) < COMM_SIZE:
        kept = f"; the kernel keeps the first {COMM_SIZE - 1}: " \
            f"'{for_terminal(raw[:COMM_SIZE - 1])}'" if raw else ""
        raise argparse.ArgumentTypeError(
            f"a task name has 1 to {COMM_SIZE - 1} bytes, not {len(raw)}{kept}")
    return text


def listen_arg(text: str) -> tuple[str, int]:
    """ADDR:PORT to serve on: 127.0.0.1:9435, [::1]:9435, or :9435 (every address)."""
    # imported here: the session file reader pulls in the probe grammar, which
    # no other tool needs (a ready tool's start is mostly imports)
    from bpfprobes.plan import sessionfile
    try:
        return sessionfile.listen_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def rate_arg(text: str) -> RateLimit:
    """'500' (all CPUs together) or '500/cpu' (each CPU)."""
    number, slash, scope = text.partition("/")
    if slash and scope != "cpu":
        raise argparse.ArgumentTypeError(f"--rate-limit takes N or N/cpu, not {text!r}")
    value = int_type(1, "--rate-limit", 2**31 - 1)(number)
    return RateLimit(value, bool(slash))


def add_rate_limit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate-limit", type=rate_arg, metavar="N[/cpu]",
                   help="send at most N events a second (all CPUs, or each with /cpu), "
                        "dropped in the kernel above that and reported as throttled")


def add_histogram_shape_options(p: argparse.ArgumentParser, unit_help: str) -> None:
    """--linear and --unit, as probe --hist and irq --hist take them."""
    p.add_argument("--linear", type=int_type(1, "--linear", 2**32), metavar="STEP",
                   help="with --hist: buckets STEP wide instead of log2")
    p.add_argument("--unit", choices=("ns", "us", "ms"), default="us", help=unit_help)


def add_session_options(p: argparse.ArgumentParser) -> None:
    """Options every tracing tool has: bounds, output, transport, verbosity."""
    p.add_argument("-d", "--duration", type=seconds_arg, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("--max-events", type=count_arg, metavar="N", help="stop after N events")
    p.add_argument("--json", action="store_true", help="print JSON lines (meta, event, lost, summary)")
    p.add_argument("--buffer-pages", type=pages_arg, default=perfbuffer.DEFAULT_PAGES, metavar="N",
                   help=f"perf buffer pages per CPU, a power of two (default {perfbuffer.DEFAULT_PAGES})")
    add_rate_limit_option(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say which mechanism is used and why, and what is attached")


T = TypeVar("T")


def options(args: argparse.Namespace, cls: type[T]) -> T:
    """A tool's typed options from the parsed command line: the Namespace stops here."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def main(tool: str, body: Callable[[Sequence[str]], int], argv: Sequence[str] | None) -> int:
    """Run a tool's body; expected failures become one line and an exit status.

    Stop signals are caught from the first line on (before planning, compiling or
    creating anything), so none is lost in any phase: one during set-up ends the
    tool at the next phase boundary with `TOOL: stopped by SIG during set-up
    (PHASE)` and the shell's status for a signal, 128+N (nothing was traced, no
    summary); one in the run loop ends the run with its summary and status 0."""
    signals.install_stop_signals()
    try:
        return _flushed(body(sys.argv[1:] if argv is None else argv))
    except signals.Stopped as e:
        _flushed(0)
        print(f"{tool}: {e}", file=sys.stderr)
        return 128 + e.signum
    except loader.CompileInterrupted as e:
        # every `with` on the way here has torn down; LLVM still runs on its thread
        _flushed(0)
        print(f"{tool}: {e}", file=sys.stderr, flush=True)
        os._exit(128 + e.signum)
    except BpfprobesError as e:
        sys.stdout.flush()
        # messages echo user input and kernel text (names, paths): escaped, and
        # a non-UTF-8 argv byte shows as \xNN rather than raising
        write_line(sys.stderr, f"{tool}: error: {for_terminal(e.what)}")
        if e.hint:
            write_line(sys.stderr, f"{tool}: hint: {for_terminal(e.hint)}")
        return e.exit_code
    except PermissionError as e:
        # a root-only file read before the root check could say so (tracefs, debugfs)
        write_line(sys.stderr, f"{tool}: error: permission denied: "
                               f"{for_terminal(str(e.filename or e))}")
        print(f"{tool}: hint: run as root", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout went away (| head); do not let Python complain on exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def _flushed(status: int) -> int:
    """Flush stdout now, so that a closed pipe (| head) is noticed here rather than
    as Python's "Exception ignored" complaint at exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status

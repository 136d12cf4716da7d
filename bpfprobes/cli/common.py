"""What every tool shares: argument types, error printing, the run pipeline."""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .. import codegen, loader, progcache, stream
from ..codegen import Program
from ..errors import BpfprobesError, KernelError, UsageError
from ..kernel import Kernel
from ..output import JsonOutput, TextOutput


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line (`TOOL: error: ...`), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message, f"see {self.prog} --help")


def parser(prog: str, description: str, examples: str) -> Parser:
    return Parser(prog=prog, description=description, epilog="examples:\n" + examples,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def int_type(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, not {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, not {value}")
        return value
    return parse


pid_arg = int_type(1, "a PID")
count_arg = int_type(1, "a count")
uid_arg = int_type(0, "a UID")


def seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration must be a number of seconds, not {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, not {text}")
    return value


def pages_arg(text: str) -> int:
    value = int_type(1, "--buffer-pages")(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"--buffer-pages must be a power of two, not {value}")
    return value


@dataclass(frozen=True)
class RateLimit:
    per_second: int
    per_cpu: bool

    def defines(self) -> dict[str, object]:
        """bpf_c/common.h RATE_LIMIT / RATE_PER_CPU."""
        return {"RATE_LIMIT": self.per_second, "RATE_PER_CPU": self.per_cpu}

    def meta(self) -> dict:
        return {"per_second": self.per_second, "per_cpu": self.per_cpu}


def rate_arg(text: str) -> RateLimit:
    """'500' (all CPUs together) or '500/cpu' (each CPU)."""
    number, slash, scope = text.partition("/")
    if slash and scope != "cpu":
        raise argparse.ArgumentTypeError(f"--rate-limit takes N or N/cpu, not {text!r}")
    value = int_type(1, "--rate-limit")(number)
    if value >= 2**31:
        raise argparse.ArgumentTypeError(f"--rate-limit must be below 2^31, not {value}")
    return RateLimit(value, bool(slash))


def apply_rate_limit(limit: RateLimit | None, defs: dict, meta: dict) -> None:
    """--rate-limit into a program's defines and the run's metadata."""
    if limit is not None:
        defs.update(limit.defines())
        meta["rate_limit"] = limit.meta()


def add_rate_limit_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate-limit", type=rate_arg, metavar="N[/cpu]",
                   help="send at most N events a second (all CPUs, or each with /cpu), "
                        "dropped in the kernel above that and reported as throttled")


def add_session_options(p: argparse.ArgumentParser) -> None:
    """Options every tracing tool has: bounds, output, transport, verbosity."""
    p.add_argument("-d", "--duration", type=seconds_arg, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("--max-events", type=count_arg, metavar="N", help="stop after N events")
    p.add_argument("--json", action="store_true", help="print JSON lines (meta, event, lost, summary)")
    p.add_argument("--buffer-pages", type=pages_arg, default=stream.DEFAULT_PAGES, metavar="N",
                   help=f"perf buffer pages per CPU, a power of two (default {stream.DEFAULT_PAGES})")
    add_rate_limit_option(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say which mechanism is used and why, and what is attached")


def require_root() -> None:
    if os.geteuid() != 0:
        raise KernelError("must be run as root: loading BPF programs needs CAP_BPF and "
                          "CAP_PERFMON (or CAP_SYS_ADMIN)", "run with sudo")


def syscall_entries(k: Kernel, syscalls: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """Each syscall's entry symbol on this kernel and whether it is behind the arch wrapper."""
    found = {sc: k.syscall_symbol(sc) for sc in syscalls}
    return {sc: s for sc, s in found.items() if s is not None}


def syscall_tracepoints(k: Kernel, syscalls: Sequence[str]) -> list[str]:
    """The syscalls:sys_enter_X / sys_exit_X pairs this kernel has."""
    return [f"syscalls:sys_{d}_{sc}" for sc in syscalls for d in ("enter", "exit")
            if k.tracepoint_exists("syscalls", f"sys_enter_{sc}")]


def syscall_kprobes(k: Kernel, entries: dict[str, tuple[str, bool]],
                    ret_fn: str) -> tuple[list[loader.Attach], dict]:
    """kp_<syscall> at each entry symbol and `ret_fn` at its return, with the
    arch's registers as -D flags (a ready tool's bpf_c program names them so)."""
    attaches = [a for sc, (sym, _) in entries.items()
                for a in (loader.Attach("kprobe", sym, f"kp_{sc}"),
                          loader.Attach("kretprobe", sym, ret_fn))]
    wrapped = all(w for _, w in entries.values())
    return attaches, {"ATTACH_KPROBE": True, **codegen.abi_defines(k.abi, wrapped)}


def syscall_tracepoint_attaches(tps: list[str], exit_fn: str) -> tuple[list[loader.Attach], dict]:
    """tp_enter_<syscall> at each sys_enter tracepoint and `exit_fn` at each sys_exit."""
    attaches = [loader.Attach("tracepoint", tp, "tp_" + tp.split(":")[1].replace("sys_", "")
                              if "enter" in tp else exit_fn) for tp in tps]
    return attaches, {"ATTACH_TRACEPOINT": True}


class Clock:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC: map it to wall-clock seconds."""

    def __init__(self) -> None:
        self.offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)

    def wall(self, ts_ns: int) -> float:
        return round(self.offset + ts_ns / 1e9, 6)


def main(tool: str, body: Callable[[Sequence[str]], int], argv: Sequence[str] | None) -> int:
    """Run a tool's body; expected failures become one line and an exit status."""
    try:
        return body(sys.argv[1:] if argv is None else argv)
    except BpfprobesError as e:
        sys.stdout.flush()
        print(f"{tool}: error: {e.what}", file=sys.stderr)
        if e.hint:
            print(f"{tool}: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except PermissionError as e:
        # a root-only file read before the root check could say so (tracefs, debugfs)
        print(f"{tool}: error: permission denied: {e.filename or e}", file=sys.stderr)
        print(f"{tool}: hint: run as root", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # stdout went away (| head); do not let Python complain on exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


@dataclass
class Pipeline:
    """compile -> open perf buffer -> attach -> meta -> loop -> summary -> detach."""

    tool: str
    kernel: Kernel
    program: Program
    attaches: list[loader.Attach]
    decode: Callable[[bytes], dict | None]       # None: filtered out in userspace
    sink: TextOutput | JsonOutput
    limits: stream.Limits
    meta: dict
    pages: int = stream.DEFAULT_PAGES
    wakeup_events: int = stream.DEFAULT_WAKEUP
    verbose: bool = False
    cacheable: bool = True              # False: BCC loads it (its stack maps are read through BCC)
    on_loaded: Callable[[object], None] | None = None    # given the loaded program before attaching
    on_tick: Callable[[], None] | None = None    # after each poll (interval reports)
    at_exit: Callable[[], dict] | None = None    # last words before the summary; extra summary keys

    def run(self) -> stream.Summary:
        started = time.monotonic()
        for stale in loader.reap_stale_events(self.kernel.tracefs):
            if self.verbose:
                print(f"{self.tool}: removed {stale}, left by a killed run", file=sys.stderr)
        # from the program cache when it holds this program: no BCC compile, no LLVM
        loaded = progcache.load(self.program, self.kernel.headers, self.attaches) \
            if self.cacheable else loader.compile_program(self.program, self.kernel.headers)
        with loaded:
            if self.on_loaded is not None:
                self.on_loaded(loaded)
            sink_event = self.sink.event
            decode = self.decode

            def on_event(raw: bytes) -> bool:
                e = decode(raw)
                if e is None:
                    return False
                sink_event(e)
                return True

            gate = stream.Gate(on_event, self.limits.max_events)
            transport = stream.PerfBuffer(loaded, pages=self.pages,
                                          wakeup_events=self.wakeup_events)
            transport.open(gate)
            self.meta["transport"] = transport.kind
            for how in self.attaches:
                loaded.attach(how)
            self.meta["probes"] = [a.describe() for a in loaded.attached]
            self.meta["program"] = getattr(loaded, "origin", "compiled")
            self.meta["startup_s"] = round(time.monotonic() - started, 3)
            # caught from before "live" is said: a signal sent on seeing it counts
            with stream.catch_signals() as signals:
                if self.verbose:
                    for a in loaded.attached:
                        print(f"{self.tool}: attached {a.describe()}", file=sys.stderr)
                    print(f"{self.tool}: live after {self.meta['startup_s']} s "
                          f"(program {self.meta['program']})", file=sys.stderr)
                self.sink.meta(self.meta)
                self.sink.flush()
                summary = stream.run(transport, gate, self.limits, self.sink.lost,
                                     on_tick=self._tick, signals=signals,
                                     on_throttled=self.sink.throttled)
        transport.close()
        extra = self.at_exit() if self.at_exit is not None else {}
        if "rate_limit" in self.meta:
            extra["throttled"] = summary.throttled
        self.sink.summary({"events": summary.events, "lost": summary.lost,
                           "reason": summary.reason, "elapsed": round(summary.elapsed, 3),
                           **extra})
        return summary

    def _tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()
        self.sink.flush()

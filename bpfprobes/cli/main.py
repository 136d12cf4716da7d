"""`bpfprobes TOOL ...`: one entry point for every tool, and the console scripts'
entry functions (setup.cfg).

Importing a tool takes most of a second (BCC, ctypes); a Ctrl-C meanwhile
would be Python's KeyboardInterrupt traceback. So this module imports almost
nothing at its top, and an entry installs the process's stop-signal recorder
(base/signals.py, cheap to import) before it imports the tool: a signal during
the imports ends the tool with one line `TOOL: stopped by SIGX during set-up
(loading)` and 128+N.
"""
from __future__ import annotations

import importlib
import signal
import sys
from typing import Callable, Sequence

from bpfprobes import __version__
from bpfprobes.base import signals

# tool name -> (module under bpfprobes.cli, its main function, one-line summary)
TOOLS = {
    "doctor": ("doctor", "main", "what this kernel offers and what the tools will do"),
    "opensnoop": ("opensnoop", "main", "trace open/openat/openat2 with results"),
    "execsnoop": ("execsnoop", "main", "trace execve/execveat with arguments"),
    "probe": ("probe", "main", "kprobe/kretprobe/uprobe/tracepoint on any function"),
    "count": ("count", "main", "count calls of functions/tracepoints in the kernel (funccount)"),
    "irq": ("irq", "main", "a device's interrupt handlers, softirqs, tasklets: time, context"),
    "serve": ("serve", "main", "a session file's in-kernel counts and histograms for Prometheus"),
}


def usage() -> str:
    lines = [f"usage: bpfprobes TOOL [ARGS...]   (bpfprobes {__version__})", "", "tools:"]
    lines += [f"  {name:<10} {summary}" for name, (_, _, summary) in TOOLS.items()]
    lines += ["", "Run `bpfprobes TOOL --help` for a tool's options and examples.",
              "", "examples:", "  bpfprobes doctor", "  bpfprobes opensnoop -x",
              "  bpfprobes probe 'p:do_sys_openat2 file=+0(%si):string'",
              "  bpfprobes irq eth0 --summary -d 10",
              "  bpfprobes serve tools/session.example.toml"]
    return "\n".join(lines)


# the module's name for a tool in its messages (common.main's first argument)
PROGS = {"doctor": "bpfprobes doctor", "probe": "bpfprobes probe", "count": "bpfprobes count",
         "irq": "bpfprobes irq", "serve": "bpfprobes serve", "opensnoop": "opensnoop", "execsnoop": "execsnoop",
         "kprobe": "kprobe"}


def _loaded(prog: str, load: Callable[[], Callable[[list[str]], int]],
            argv: list[str]) -> int:
    """Import a tool (load) with the stop-signal recorder already installed (it
    is cheap to import), then run it; a signal during the imports: one line and
    128+N, nothing was created. Off the main thread nothing can be installed."""
    recorder = signals.install_stop_signals()
    tool_main = load()
    if recorder.caught is not None:
        name = signal.Signals(recorder.caught).name
        print(f"{prog}: stopped by {name} during set-up (loading)", file=sys.stderr)
        return 128 + recorder.caught
    return tool_main(argv)


def _entry(module: str, function: str, prog: str) -> Callable[[], int]:
    def entry() -> int:
        return _loaded(prog, lambda: getattr(importlib.import_module(f"bpfprobes.cli.{module}"),
                                             function), sys.argv[1:])
    entry.__doc__ = f"The `{prog}` console script."
    return entry


opensnoop = _entry("opensnoop", "main", "opensnoop")
execsnoop = _entry("execsnoop", "main", "execsnoop")
kprobe = _entry("probe", "kprobe_main", "kprobe")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("bpfprobes: error: no tool given", file=sys.stderr)
        print("bpfprobes: hint: tools: " + ", ".join(TOOLS) + "; bpfprobes --help says more",
              file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    entry = TOOLS.get(argv[0])
    if entry is None:
        from bpfprobes.base.safetext import for_terminal
        # escaped: argv may hold control characters and bytes that are not UTF-8
        print(f"bpfprobes: error: unknown tool '{for_terminal(argv[0])}'", file=sys.stderr)
        print("bpfprobes: hint: tools: " + ", ".join(TOOLS), file=sys.stderr)
        return 2
    return _loaded(PROGS.get(argv[0], f"bpfprobes {argv[0]}"),
                   lambda: getattr(importlib.import_module(f"bpfprobes.cli.{entry[0]}"), entry[1]),
                   argv[1:])


if __name__ == "__main__":
    sys.exit(main())

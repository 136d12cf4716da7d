"""`bpfprobes TOOL ...`: one entry point for every tool."""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

from .. import __version__

# tool name -> (module under bpfprobes.cli, its main function, one-line summary)
TOOLS = {
    "doctor": ("doctor", "main", "what this kernel offers and what the tools will do"),
    "opensnoop": ("opensnoop", "main", "trace open/openat/openat2 with results"),
    "execsnoop": ("execsnoop", "main", "trace execve/execveat with arguments"),
    "probe": ("probe", "main", "kprobe/kretprobe/uprobe/tracepoint on any function"),
    "count": ("count", "main", "count calls of functions/tracepoints in the kernel (funccount)"),
    "irq": ("irq", "main", "a device's interrupt handlers, softirqs, tasklets: time, context"),
}


def usage() -> str:
    lines = [f"usage: bpfprobes TOOL [ARGS...]   (bpfprobes {__version__})", "", "tools:"]
    lines += [f"  {name:<10} {summary}" for name, (_, _, summary) in TOOLS.items()]
    lines += ["", "Run `bpfprobes TOOL --help` for a tool's options and examples.",
              "", "examples:", "  bpfprobes doctor", "  bpfprobes opensnoop -x",
              "  bpfprobes probe 'p:do_sys_openat2 file=+0(%si):string'",
              "  bpfprobes irq eth0 --summary -d 10"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    entry = TOOLS.get(argv[0])
    if entry is None:
        print(f"bpfprobes: error: unknown tool {argv[0]!r}", file=sys.stderr)
        print("bpfprobes: hint: tools: " + ", ".join(TOOLS), file=sys.stderr)
        return 2
    module = importlib.import_module(f"bpfprobes.cli.{entry[0]}")
    return getattr(module, entry[1])(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

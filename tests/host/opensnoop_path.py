"""opensnoop with its preferred tracepoint path taken away, so that the paths it
falls back to on older kernels run on this one too (a real run, real kernel):

    python tests/host/opensnoop_path.py raw|pairs [opensnoop options]

raw: raw_syscalls:sys_exit (kernels without bpf_task_pt_regs); pairs: the
syscalls:sys_{enter,exit}_open* pairs and a map (arches without the raw table).
"""
import sys

from bpfprobes.cli.main import main
from bpfprobes.tools import opensnoop

TAKEN_AWAY = {"raw": ("_syscall_exit_defs",),
              "pairs": ("_syscall_exit_defs", "_raw_syscalls_defs")}

if __name__ == "__main__":
    for name in TAKEN_AWAY[sys.argv[1]]:
        setattr(opensnoop, name, lambda k: None)
    sys.exit(main(["opensnoop", *sys.argv[2:]]))

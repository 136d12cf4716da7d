"""Per-architecture ABI tables: data, not branches.

Each table says, for one architecture, which registers carry function and
syscall arguments, which carries the return value, how the kernel's
kprobe_events syntax names every register, and which `struct pt_regs` member
holds it (the C expression codegen emits). Every table is tested on every host.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Mapping

from bpfprobes.base.errors import UsageError


@dataclass(frozen=True)
class Abi:
    name: str                          # as `uname -m` prints it
    aliases: tuple[str, ...]           # other spellings users and distros use
    func_args: tuple[str, ...]         # kprobe_events names of argument registers, in order
    syscall_args: tuple[str, ...]      # the same for a syscall's user pt_regs
    retval: str                        # register holding a function's return value
    members: Mapping[str, str]         # register name -> pt_regs member (C)
    register_aliases: Mapping[str, str] = field(default_factory=dict)  # alias -> register
    # Syscall entry symbols, most specific first; a prefixed wrapper receives
    # the user's pt_regs as its only argument and arguments sit behind it.
    syscall_prefixes: tuple[str, ...] = ("sys_",)
    wrapped_prefixes: tuple[str, ...] = ()
    pointer_size: int = 8
    stack_pointer: str = "sp"
    # Where a probe may land (elfsym.boundary_problem): the ELF e_machine of this
    # arch's binaries, the alignment of every instruction start, and for variable
    # length code a capstone (CS_ARCH_*, CS_MODE_*) that decodes from a symbol's start.
    elf_machine: int = 0
    insn_align: int = 4
    thumb_align: int = 0               # arm: a symbol with bit 0 set is Thumb code
    insn_decoder: tuple[str, str] | None = None
    compat_elf_machines: tuple[int, ...] = ()   # other binaries this kernel runs (i386)
    # syscall(2) numbers of bpf and perf_event_open (asm/unistd.h)
    nr_bpf: int = 0
    nr_perf_event_open: int = 0
    # total store order: perfring's direct reader may skip the barriers it needs elsewhere
    tso: bool = False
    # user and kernel addresses apart (ARCH_HAS_NON_OVERLAPPING_ADDRESS_SPACE): the
    # legacy probe_read helpers, which read either by address, exist
    non_overlapping: bool = False
    # where a function's return address is at its first instruction: a register,
    # or None: the word at the stack pointer
    link_register: str | None = None
    # the bit of the per-CPU preempt_count that means "no reschedule needed" (x86)
    inverted_resched_bit: int = 0
    # a program on raw_syscalls:sys_exit (opensnoop's path without bpf_task_pt_regs): the pt_regs
    # member holding the syscall number, the open syscalls' numbers, the
    # thread_info status flag of a compat syscall; None: use syscalls:* instead
    raw_syscalls: Mapping[str, object] | None = None
    # the syscall argument registers (syscall_args) still hold the arguments in
    # the user's saved pt_regs at the syscall's exit (opensnoop reads them there);
    # set where checked on that arch's kernel (x86-64: only ax, cx, r11 change)
    args_kept_at_exit: bool = False

    def canonical(self, reg: str) -> str | None:
        """The table's own name for a register name or alias, or None."""
        reg = reg.lstrip("%")
        if reg in self.members:
            return reg
        return self.register_aliases.get(reg)

    def member(self, reg: str) -> str:
        """pt_regs member for a register; UsageError naming the fix if unknown."""
        canon = self.canonical(reg)
        if canon is None:
            raise UsageError(*_unknown_register_message(self, reg.lstrip("%")))
        return self.members[canon]

    def arg_register(self, index: int, syscall: bool = False) -> str:
        """Register of 1-based argument `index` (function or syscall convention)."""
        regs = self.syscall_args if syscall else self.func_args
        if not 1 <= index <= len(regs):
            kind = "syscall" if syscall else "function"
            raise UsageError(
                f"{self.name} passes only {len(regs)} {kind} arguments in registers; "
                f"argument {index} is on the stack",
                f"use $stackN or a dereference of %{self.stack_pointer}")
        return regs[index - 1]

    def parm_macro(self, index: int) -> str:
        """BCC's macro for a function argument (what arg_register expands to)."""
        self.arg_register(index)
        return f"PT_REGS_PARM{index}"

    def arg_index(self, reg: str) -> int | None:
        """1-based function-argument position of a register, if it is one."""
        canon = self.canonical(reg)
        return self.func_args.index(canon) + 1 if canon in self.func_args else None


def _numbered(prefix: str, member: str, count: int, start: int = 0) -> dict[str, str]:
    return {f"{prefix}{i}": f"{member}[{i}]" for i in range(start, start + count)}


_X86_GPRS = ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip", "flags",
             "orig_ax", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

X86_64 = Abi(
    name="x86_64",
    aliases=("amd64", "x86-64", "x64"),
    func_args=("di", "si", "dx", "cx", "r8", "r9"),
    syscall_args=("di", "si", "dx", "r10", "r8", "r9"),   # 4th is r10: syscall clobbers rcx
    retval="ax",
    members={r: r for r in _X86_GPRS},
    register_aliases={**{f"r{r}": r for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip")},
                      **{f"e{r}": r for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp", "ip")}},
    syscall_prefixes=("__x64_sys_", "sys_"),
    wrapped_prefixes=("__x64_sys_",),
    elf_machine=62,                    # EM_X86_64
    insn_align=1,
    insn_decoder=("CS_ARCH_X86", "CS_MODE_64"),
    compat_elf_machines=(3,),          # EM_386
    nr_bpf=321, nr_perf_event_open=298, tso=True, non_overlapping=True,
    inverted_resched_bit=0x80000000,
    args_kept_at_exit=True,
    raw_syscalls={"SYSCALL_NR": "orig_ax", "NR_OPEN": 2, "NR_OPENAT": 257, "NR_OPENAT2": 437,
                  "TS_COMPAT": 0x0002},
)

AARCH64 = Abi(
    name="aarch64",
    aliases=("arm64",),
    func_args=tuple(f"x{i}" for i in range(8)),
    syscall_args=("orig_x0", "x1", "x2", "x3", "x4", "x5"),  # x0 is overwritten by the return value
    retval="x0",
    members={**_numbered("x", "regs", 31), "sp": "sp", "pc": "pc", "pstate": "pstate",
             "orig_x0": "orig_x0"},
    register_aliases={"lr": "x30", "fp": "x29"},
    syscall_prefixes=("__arm64_sys_", "sys_"),
    wrapped_prefixes=("__arm64_sys_",),
    elf_machine=183,                   # EM_AARCH64
    insn_align=4,
    nr_bpf=280, nr_perf_event_open=241, non_overlapping=True, link_register="lr",
)

ARM = Abi(
    name="arm",
    aliases=("armv7l", "armv7", "armv6l", "armhf", "armel"),
    func_args=("r0", "r1", "r2", "r3"),
    syscall_args=("r0", "r1", "r2", "r3", "r4", "r5"),
    retval="r0",
    members={**_numbered("r", "uregs", 11), "fp": "uregs[11]", "ip": "uregs[12]",
             "sp": "uregs[13]", "lr": "uregs[14]", "pc": "uregs[15]", "cpsr": "uregs[16]",
             "ORIG_r0": "uregs[17]"},
    register_aliases={"r11": "fp", "r12": "ip", "r13": "sp", "r14": "lr", "r15": "pc"},
    syscall_prefixes=("sys_",),
    pointer_size=4,
    elf_machine=40,                    # EM_ARM
    insn_align=4,                      # A32
    thumb_align=2,                     # T32: 2 or 4 bytes
    nr_bpf=386, nr_perf_event_open=364, non_overlapping=True, link_register="lr",
)

RISCV64 = Abi(
    name="riscv64",
    aliases=("riscv",),
    func_args=tuple(f"a{i}" for i in range(8)),
    syscall_args=("orig_a0", "a1", "a2", "a3", "a4", "a5"),
    retval="a0",
    members={**{f"a{i}": f"a{i}" for i in range(8)}, **{f"s{i}": f"s{i}" for i in range(12)},
             **{f"t{i}": f"t{i}" for i in range(7)},
             "ra": "ra", "sp": "sp", "gp": "gp", "tp": "tp", "epc": "epc", "orig_a0": "orig_a0"},
    register_aliases={**{f"x{10 + i}": f"a{i}" for i in range(8)}, "x1": "ra", "x2": "sp",
                      "pc": "epc", "fp": "s0"},
    syscall_prefixes=("__riscv_sys_", "sys_"),
    wrapped_prefixes=("__riscv_sys_",),
    elf_machine=243,                   # EM_RISCV
    insn_align=2,                      # the C extension's 2-byte instructions
    nr_bpf=280, nr_perf_event_open=241, non_overlapping=True, link_register="ra",
)

PPC64LE = Abi(
    name="ppc64le",
    aliases=("ppc64", "powerpc64le", "powerpc"),
    func_args=tuple(f"r{i}" for i in range(3, 11)),
    syscall_args=("orig_gpr3", "r4", "r5", "r6", "r7", "r8"),
    retval="r3",
    members={**_numbered("r", "gpr", 32), "nip": "nip", "msr": "msr", "ctr": "ctr",
             "link": "link", "xer": "xer", "ccr": "ccr", "orig_gpr3": "orig_gpr3"},
    register_aliases={"sp": "r1", "pc": "nip", "lr": "link"},
    syscall_prefixes=("__powerpc_sys_", "sys_"),
    wrapped_prefixes=("__powerpc_sys_",),
    stack_pointer="r1",
    elf_machine=21,                    # EM_PPC64
    insn_align=4,
    nr_bpf=361, nr_perf_event_open=319, link_register="lr",
)

S390X = Abi(
    name="s390x",
    aliases=("s390",),
    func_args=("r2", "r3", "r4", "r5", "r6"),
    syscall_args=("orig_gpr2", "r3", "r4", "r5", "r6", "r7"),
    retval="r2",
    members={**_numbered("r", "gprs", 16), "orig_gpr2": "orig_gpr2", "psw_mask": "psw.mask",
             "psw_addr": "psw.addr"},
    register_aliases={"sp": "r15", "pc": "psw_addr"},
    syscall_prefixes=("__s390x_sys_", "sys_"),
    wrapped_prefixes=("__s390x_sys_",),
    stack_pointer="r15",
    elf_machine=22,                    # EM_S390
    insn_align=2,                      # 2, 4 or 6 bytes
    nr_bpf=351, nr_perf_event_open=331, non_overlapping=True, link_register="r14",
)

ALL: tuple[Abi, ...] = (X86_64, AARCH64, ARM, RISCV64, PPC64LE, S390X)

_BY_NAME: dict[str, Abi] = {n: a for a in ALL for n in (a.name, *a.aliases)}


def get(name: str) -> Abi:
    """The table for an architecture name or alias (`uname -m` spelling or Debian's)."""
    abi = _BY_NAME.get(name)
    if abi is None:
        raise UsageError(f"unknown architecture {name!r}",
                         "known: " + ", ".join(a.name for a in ALL))
    return abi


def by_elf_machine(machine: int) -> Abi | None:
    """The table whose binaries carry this ELF e_machine, or None."""
    return next((a for a in ALL if a.elf_machine == machine), None)


def host() -> Abi:
    """The table of the machine we run on."""
    return get(platform.machine())


def _unknown_register_message(abi: Abi, reg: str) -> tuple[str, str]:
    """`%si is not an arm register; argument 2 is %r1` — find what the user meant."""
    for other in ALL:
        pos = other.arg_index(reg)
        if pos is not None and pos <= len(abi.func_args):
            mine = abi.func_args[pos - 1]
            return (f"%{reg} is not {_article(abi.name)} {abi.name} register; argument {pos} is %{mine} (or $arg{pos})",
                    f"{abi.name} passes arguments in " + ", ".join("%" + r for r in abi.func_args))
    return (f"%{reg} is not {_article(abi.name)} {abi.name} register",
            f"{abi.name} registers: " + ", ".join("%" + r for r in abi.members))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiosx" else "a"   # an x86_64, an s390x, a ppc64le

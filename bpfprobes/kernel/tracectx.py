"""The execution context of an event (bpf_c/context.h), as fields and as ftrace's
latency-format text ("dNh1": irqs-off, need-resched, hardirq/softirq, preempt depth).

The whole of it comes from the preempt_count, which a probe reads where kallsyms
(a per-CPU variable, x86) or BTF (the task's thread_info, arm64) shows where it
is; its layout (include/linux/preempt.h) has not
changed since 5.x. Where it cannot be read, an event carries the context its
attach point implies (a hardirq handler runs in hardirq context, with
interrupts off) and the rest is shown as unknown, never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass

from bpfprobes.kernel.arch import get as get_abi
from bpfprobes.kernel.btf import Btf, BtfError
from bpfprobes.kernel.kallsyms import DATA_KINDS, Kallsyms

SOURCE_NONE, SOURCE_IMPLIED, SOURCE_PREEMPT = 0, 1, 2   # bpf_c/context.h CTX_SOURCE_*
SOURCE_FTRACE = 3              # the latency columns ftrace printed (the tracefs backend)
IMPLIED = ("task", "softirq", "hardirq", "nmi")          # CTX_TASK .. CTX_NMI

# preempt_count fields
PREEMPT_MASK = 0x000000FF
SOFTIRQ_OFFSET = 0x00000100          # serving a softirq
SOFTIRQ_DISABLE_OFFSET = 0x00000200  # each local_bh_disable()
SOFTIRQ_MASK = 0x0000FF00
HARDIRQ_MASK = 0x000F0000
NMI_MASK = 0x00F00000

# ftrace's hardirq/softirq column by context
_IRQ_LETTER = {"nmi": "z", "hardirq": "h", "softirq": "s", "task": "."}


def preempt_defines(kallsyms: Kallsyms, btf: Btf | None) -> dict[str, object]:
    """-D defines that let a kprobe read the preempt_count (context.h): a per-CPU
    variable where kallsyms shows where it is (x86), else the current task's
    thread_info member where BTF shows one (arm64 and others keep it per task);
    none where neither is seen (kallsyms without data symbols: CONFIG_KALLSYMS_ALL
    off, or addresses hidden by kptr_restrict; no BTF)."""
    offsets = _data_symbol(kallsyms, "__per_cpu_offset")
    var = _percpu_counter(kallsyms, btf) if offsets else None
    if var is not None:
        return {"PERCPU_OFFSETS": f"{offsets:#x}ULL", "PREEMPT_COUNT_VAR": f"{var:#x}ULL"}
    if btf is None:
        return {}
    try:
        at = btf.member_offset("task_struct", "thread_info") + \
            btf.member_offset("thread_info", "preempt_count")
    except BtfError:                              # x86's thread_info has none
        return {}
    return {"TASK_PREEMPT_COUNT": str(at)}


def _percpu_counter(kallsyms: Kallsyms, btf: Btf | None) -> int | None:
    var = _data_symbol(kallsyms, "__preempt_count")
    if var is None and btf is not None:           # 6.2 - 6.14: inside struct pcpu_hot
        hot = _data_symbol(kallsyms, "pcpu_hot")
        try:
            var = None if hot is None else hot + btf.member_offset("pcpu_hot", "preempt_count")
        except BtfError:
            var = None
    return var


def _data_symbol(kallsyms: Kallsyms, name: str) -> int | None:
    found = kallsyms.find(name, kinds=DATA_KINDS)
    return found[0].addr or None if found else None     # 0: addresses hidden (kptr_restrict)


@dataclass(frozen=True)
class Context:
    cpu: int
    context: str | None          # nmi | hardirq | softirq | task; None: not known
    source: str                  # preempt_count | implied | none
    irqs_off: bool | None
    bh_off: bool | None
    need_resched: bool | None
    preempt: int | None          # preempt depth, the probe's own level not counted
    flags: str                   # ftrace's four columns; "?" where not known

    def as_dict(self) -> dict:
        return {"cpu": self.cpu, "context": self.context, "source": self.source,
                "irqs_off": self.irqs_off, "bh_off": self.bh_off,
                "need_resched": self.need_resched, "preempt": self.preempt, "flags": self.flags}


class Decoder:
    """struct exec_ctx fields -> Context, for this arch."""

    def __init__(self, arch: str) -> None:
        # x86 keeps "no reschedule needed" in a bit of its per-CPU preempt_count
        self.inverted = get_abi(arch).inverted_resched_bit or None
        self._memo: dict[tuple[int, int, int, int], Context] = {}

    def __call__(self, c: dict) -> Context:
        if c["source"] == SOURCE_FTRACE:
            return from_ftrace(c["cpu"], c["flags"])
        key = (c["cpu"], c["source"], c["implied"], c["preempt"])
        got = self._memo.get(key)
        if got is None:
            got = self._decode(*key)
            if len(self._memo) < 4096:
                self._memo[key] = got
        return got

    def _decode(self, cpu: int, source: int, implied: int, pc: int) -> Context:
        if source == SOURCE_PREEMPT:
            return self._from_preempt_count(cpu, pc)
        if source == SOURCE_IMPLIED and implied < len(IMPLIED):
            where = IMPLIED[implied]
            irqs_off = True if where in ("hardirq", "nmi") else None
            return Context(cpu, where, "implied", irqs_off, None, None, None,
                           ("d" if irqs_off else "?") + "?" + _IRQ_LETTER[where] + "?")
        return Context(cpu, None, "none", None, None, None, None, "????")

    def _from_preempt_count(self, cpu: int, pc: int) -> Context:
        where = "nmi" if pc & NMI_MASK else "hardirq" if pc & HARDIRQ_MASK else \
            "softirq" if pc & SOFTIRQ_OFFSET else "task"
        bh_off = (pc & SOFTIRQ_MASK) >= SOFTIRQ_DISABLE_OFFSET
        need = None if self.inverted is None else not (pc & self.inverted)
        depth = max(0, (pc & PREEMPT_MASK) - 1)    # the probe's own preempt_disable
        # hardirq and NMI handlers run with interrupts off; elsewhere the flags are not seen
        irqs_off = True if where in ("hardirq", "nmi") else None
        letter = _IRQ_LETTER[where]
        if where == "hardirq" and pc & SOFTIRQ_OFFSET:
            letter = "H"                           # a hardirq that came during a softirq
        text = (("D" if bh_off else "d") if irqs_off else ("b" if bh_off else "X"))
        text += "?" if need is None else "n" if need else "."
        text += letter + ("." if depth == 0 else f"{min(depth, 15):x}")
        return Context(cpu, where, "preempt_count", irqs_off, bh_off, need, depth, text)


# ftrace's latency columns, letter -> meaning (kernel/trace/trace_output.c)
_FT_IRQS = {"D": (True, True), "d": (True, False), "b": (False, True), ".": (False, False),
            "X": (None, None)}
_FT_RESCHED = {"N": True, "n": True, "B": True, "L": True, "p": False, ".": False}
_FT_CONTEXT = {"Z": "nmi", "z": "nmi", "H": "hardirq", "h": "hardirq", "s": "softirq",
               ".": "task"}


def from_ftrace(cpu: int, flags: str) -> Context:
    """'d.h1' (or with a fifth, migrate-disable column) as ftrace printed it.
    Every bit set ("DBZf": NMI and hardirq at once, depth 15) is no context at
    all: what uprobe events record on kernels that do not fill it in (6.18)."""
    if flags[:4] == "DBZf":
        return Context(cpu, None, "none", None, None, None, None, "????")
    irqs_off, bh_off = _FT_IRQS.get(flags[:1], (None, None))
    need = _FT_RESCHED.get(flags[1:2])
    where = _FT_CONTEXT.get(flags[2:3])
    depth = flags[3:4]
    preempt = 0 if depth == "." else int(depth, 16) if depth in "0123456789abcdef" and depth \
        else None
    return Context(cpu, where, "ftrace", irqs_off, bh_off, need, preempt, flags[:4])

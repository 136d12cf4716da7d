"""The irq tool's pure parts: /proc/interrupts, handler lookup, context decoding,
softirq names, percentiles."""
import argparse

import pytest

from bpfprobes.base.errors import UsageError
from bpfprobes.cli import irq as irqcli
from bpfprobes.kernel import interrupts, irqhandlers, tracectx
from bpfprobes.kernel.btf import BtfError
from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.present import latency

PROC = """\
           CPU0       CPU1       
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 11:         70          3  IO-APIC  11-fasteoi   uhci_hcd:usb1, eth1
 36:          0     689523 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 38:          0       3452 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       2665          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 40:          5          0 PCI-MSI-0000:01:00.0   0-edge      nvme0q0
NMI:          0          0   Non-maskable interrupts
LOC:    2853289    2853613   Local timer interrupts
ERR:          0
"""


def test_read_lines():
    lines = interrupts.read_lines(PROC)
    assert sorted(lines) == [11, 24, 36, 38, 39, 40]
    assert lines[36].counts == (0, 689523) and lines[36].total == 689523
    assert (lines[36].chip, lines[36].hwirq, lines[36].name) == \
        ("PCI-MSIX-0000:00:02.0", "1-edge", "virtio1-req.0")
    assert lines[11].name == "uhci_hcd:usb1, eth1"          # a shared line: both actions


ARM64_PROC = """\
           CPU0       CPU1       
 11:      39521      39327     GICv2  30 Level     arch_timer
 24:       4720          0     GIC-0  77 Edge      virtio7
 28:          0          0       MSI 16384 Edge      virtio0-config
 29:        274          0       MSI 16385 Edge      virtio0-req.0
 31:          3          0     GIC-0  33 Level    -fasteoi   uart-pl011
IPI0:      1523       1672       Rescheduling interrupts
"""


def test_read_lines_with_the_trigger_as_a_word():
    """arm64 (GENERIC_IRQ_SHOW_LEVEL) prints "Edge"/"Level" apart, maybe a flow after."""
    lines = interrupts.read_lines(ARM64_PROC)
    assert sorted(lines) == [11, 24, 28, 29, 31]
    assert [lines[n].name for n in (11, 24, 28, 29, 31)] == \
        ["arch_timer", "virtio7", "virtio0-config", "virtio0-req.0", "uart-pl011"]
    assert (lines[29].chip, lines[29].hwirq, lines[29].total) == ("MSI", "16385", 274)


def test_named_after():
    lines = interrupts.read_lines(PROC)
    assert interrupts._named_after(lines, ["virtio2"]) == [38, 39]
    assert interrupts._named_after(lines, ["eth1"]) == [11]
    assert interrupts._named_after(lines, ["nvme0"]) == [40]
    assert interrupts._named_after(lines, ["virtio1"]) == [36]     # not virtio10-...


def test_resolve_by_irq_and_pattern():
    lines = interrupts.read_lines(PROC)
    assert interrupts.resolve(None, [38, 36], None, lines).irqs == [36, 38]
    assert interrupts.resolve(None, [], "virtio*-input*", lines).irqs == [38]
    assert interrupts.resolve(None, [], "eth1", lines).irqs == [11]   # one of a shared line's
    assert interrupts.resolve(None, [], None, lines).kind == "all"
    with pytest.raises(UsageError, match="IRQ 99 is not in /proc/interrupts"):
        interrupts.resolve(None, [99], None, lines)
    with pytest.raises(UsageError, match="no IRQ line named like"):
        interrupts.resolve(None, [], "nothing*", lines)


KALLSYMS = (b"ffffffff81000010 T vring_interrupt\n"
            b"ffffffff81000020 t vp_config_changed\n"
            b"ffffffffa0000010 t e1000_intr\t[e1000]\n"
            b"ffffffffa0000020 t e1000_probe\t[e1000]\n"
            b"ffffffffa0001010 t foo_isr\t[foo]\n"
            b"ffffffffa0001020 t foo_open\t[foo]\n")


@pytest.mark.parametrize("driver, module, names, by_irq", [
    ("virtio_blk", None, {35: "virtio1-config", 36: "virtio1-req.0"},
     {35: "vp_config_changed", 36: "vring_interrupt"}),
    ("e1000", "e1000", {11: "eth0"}, {11: "e1000_intr"}),
    ("foo", "foo", {12: "foo0"}, {}),
])
def test_handlers(driver, module, names, by_irq):
    h = irqhandlers.find(Kallsyms(text=KALLSYMS), driver, module, names)
    assert h.by_irq == by_irq
    assert h.candidates == (["foo_isr"] if driver == "foo" else [])


def test_a_handler_kallsyms_lacks_is_not_offered():
    h = irqhandlers.find(Kallsyms(text=b"ffffffff81000010 T other\n"), "e1000", "e1000",
                         {11: "eth0"})
    assert h.by_irq == {}


def ctx(source, implied=0, preempt=0, cpu=1):
    return {"cpu": cpu, "source": source, "implied": implied, "preempt": preempt}


@pytest.mark.parametrize("pc, where, flags, bh_off, need, depth", [
    (0x80000001, "task", "X.." + ".", False, False, 0),            # only the probe's own level
    (0x80010001, "hardirq", "d.h.", False, False, 0),
    (0x80010101, "hardirq", "d.H.", False, False, 0),              # hardirq over a softirq
    (0x80000101, "softirq", "X.s.", False, False, 0),
    (0x80000203, "task", "b..2", True, False, 2),          # bh off, depth 2
    (0x00000001, "task", "Xn..", False, True, 0),                  # x86: bit clear = resched
    (0x80100001, "nmi", "d.z.", False, False, 0),
])
def test_context_from_preempt_count(pc, where, flags, bh_off, need, depth):
    c = tracectx.Decoder("x86_64")(ctx(tracectx.SOURCE_PREEMPT, preempt=pc))
    assert (c.context, c.flags, c.bh_off, c.need_resched, c.preempt) == \
        (where, flags, bh_off, need, depth)
    assert c.source == "preempt_count"


def test_context_where_the_counter_is_not_seen():
    d = tracectx.Decoder("x86_64")
    hard = d(ctx(tracectx.SOURCE_IMPLIED, implied=2))
    assert (hard.context, hard.irqs_off, hard.preempt, hard.flags, hard.source) == \
        ("hardirq", True, None, "d?h?", "implied")
    soft = d(ctx(tracectx.SOURCE_IMPLIED, implied=1))
    assert (soft.context, soft.irqs_off, soft.flags) == ("softirq", None, "??s?")
    none = d(ctx(tracectx.SOURCE_NONE))
    assert (none.context, none.flags, none.cpu) == (None, "????", 1)


def test_need_resched_not_known_off_x86():
    c = tracectx.Decoder("aarch64")(ctx(tracectx.SOURCE_PREEMPT, preempt=0x1))
    assert c.need_resched is None and c.flags[1] == "?"


def test_preempt_defines_need_data_symbols():
    k = Kallsyms(text=b"ffffffff83000000 D __per_cpu_offset\n000000000001f9c0 D __preempt_count\n")
    assert tracectx.preempt_defines(k, None) == {"PERCPU_OFFSETS": "0xffffffff83000000ULL",
                                                 "PREEMPT_COUNT_VAR": "0x1f9c0ULL"}
    debian = Kallsyms(text=b"ffffffff88a1cb60 D __per_cpu_offset\n000000000001fb40 A __preempt_count\n")
    assert tracectx.preempt_defines(debian, None)["PREEMPT_COUNT_VAR"] == "0x1fb40ULL"
    hidden = Kallsyms(text=b"0000000000000000 D __per_cpu_offset\n0000000000000000 D __preempt_count\n")
    assert tracectx.preempt_defines(hidden, None) == {}
    assert tracectx.preempt_defines(Kallsyms(text=b"ffffffff81000000 T _stext\n"), None) == {}


class MembersOnly:
    """What preempt_defines asks of BTF: member offsets (others raise, as Btf does)."""

    def __init__(self, members: dict) -> None:
        self.members = members

    def member_offset(self, struct: str, member: str) -> int:
        if (struct, member) not in self.members:
            raise BtfError(f"struct {struct} has no member {member}")
        return self.members[(struct, member)]


def test_preempt_count_in_the_task_where_no_per_cpu_counter():
    """arm64: __per_cpu_offset is listed, no __preempt_count; the count is
    task_struct.thread_info.preempt_count (BTF)."""
    arm64 = Kallsyms(text=b"ffff800009a3e000 D __per_cpu_offset\n")
    btf = MembersOnly({("task_struct", "thread_info"): 0, ("thread_info", "preempt_count"): 8})
    assert tracectx.preempt_defines(arm64, btf) == {"TASK_PREEMPT_COUNT": "8"}
    assert tracectx.preempt_defines(arm64, MembersOnly({})) == {}      # x86's thread_info
    assert tracectx.preempt_defines(arm64, None) == {}
    # a per-CPU counter, where there is one, is read first
    x86 = Kallsyms(text=b"ffffffff83000000 D __per_cpu_offset\n000000000001f9c0 D __preempt_count\n")
    assert "PREEMPT_COUNT_VAR" in tracectx.preempt_defines(x86, btf)


@pytest.mark.parametrize("text, mask", [("NET_RX", 1 << 3), ("net_rx,timer", (1 << 3) | 2),
                                        ("BLOCK_SOFTIRQ", 1 << 4), ("all", 0x3FF)])
def test_softirq_names(text, mask):
    assert irqcli._softirq_list(text) == mask


def test_softirq_unknown():
    with pytest.raises(argparse.ArgumentTypeError, match="unknown softirq 'NET_XX'"):
        irqcli._softirq_list("NET_XX")


def test_reservoir_percentiles_bounded():
    r = latency.Reservoir(keep=1000)
    for v in range(1, 100_001):
        r.add(v)
    s = r.summary()
    assert s["count"] == 100_000 and s["max"] == 100_000 and len(r.kept) == 1000
    assert 45_000 < s["p50"] < 55_000 and s["p99"] > 95_000
    assert latency.Reservoir().summary() is None
    assert latency.human_ns(1_234_567) == "1.235 ms" and latency.human_ns(999) == "999 ns"

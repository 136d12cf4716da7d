"""trace_pipe lines of our dynamic events, parsed; ftrace's latency columns decoded."""
import pytest

from bpfprobes import tracectx, tracepipe

NAMES = {"three": ["a", "s", "x"], "three__return": ["ret"], "do_sys_openat2": ["file"]}


def test_uprobe_line_with_a_quoted_string_holding_quotes_and_spaces():
    ln = tracepipe.parse('  probe target-21176   (  21170) [001] d..1. 14920.672168: three: '
                         '(0x5596edc271e3) a=-7 s="my tag "q" x=1" x=0x8', NAMES)
    assert (ln.event, ln.comm, ln.tid, ln.pid, ln.cpu, ln.flags) == \
        ("three", "probe target", 21176, 21170, 1, "d..1.")
    assert ln.ts_ns == 14920672168000 and ln.where == "0x5596edc271e3"
    assert ln.values == {"a": "-7", "s": 'my tag "q" x=1', "x": "0x8"}


def test_return_probe_where_and_unknown_tgid():
    ln = tracepipe.parse("cat-270 (-------) [000] .... 212.600842: three__return: "
                         "(do_sys_open+0x1a/0x30 <- do_sys_openat2) ret=-2", NAMES)
    assert ln.pid is None and ln.where == "do_sys_open+0x1a/0x30 <- do_sys_openat2"
    assert ln.values == {"ret": "-2"}


def test_other_lines():
    assert tracepipe.parse(" => vfs_read+0x9c/0x170", NAMES) == "vfs_read+0x9c/0x170"
    assert tracepipe.parse("cat-270 (  270) [000] .... 212.6: <stack trace>", NAMES) is None
    assert tracepipe.parse("cat-270 (  270) [000] .... 212.6: sched_switch: x=1", NAMES) is None
    assert tracepipe.parse("garbage", NAMES) is None


@pytest.mark.parametrize("value, kind, typed", [
    ("-7", "s", -7), ("8", "u", 8), ("0x1f", "x", 31), ("(fault)", "string", None),
    ("do_sys_open+0x10/0x40", "symbol", "do_sys_open+0x10"), ("abc", "string", "abc")])
def test_typed(value, kind, typed):
    assert tracepipe.typed(value, kind) == typed


@pytest.mark.parametrize("flags, where, irqs_off, need, depth", [
    ("d.h1.", "hardirq", True, False, 1), ("....", "task", False, False, 0),
    ("dNs2", "softirq", True, True, 2), ("Dnz.", "nmi", True, True, 0),
    ("X..3", "task", None, False, 3)])
def test_ftrace_columns(flags, where, irqs_off, need, depth):
    c = tracectx.from_ftrace(0, flags)
    assert (c.context, c.irqs_off, c.need_resched, c.preempt, c.source) == \
        (where, irqs_off, need, depth, "ftrace")


def test_all_bits_set_is_no_context():
    assert tracectx.from_ftrace(1, "DBZff").context is None

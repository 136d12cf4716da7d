"""trace_pipe lines of our dynamic events, parsed; ftrace's latency columns decoded."""
import pytest

from bpfprobes.backends.tracefs import tracepipe
from bpfprobes.kernel import tracectx

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


# ---------------------------------------------------------------- forged text (F2)
# ftrace prints comm and string values raw: a traced program's `"`, ` NAME=` and
# newlines must not shift fields or make lines that read as events of their own.

FIELDS = {"search_for_command": [("arg1", "string"), ("flags", "x")],
          "three": [("a", "s"), ("s", "string"), ("x", "x")]}
HEAD = "            prog-4242   (   4242) [001] d..1.  4945.457657: search_for_command: (0x55da564cc4d0) "
FORGED = ("           sshd-1       (      1) [000] d..2.  4157.317829: search_for_command: "
          "(0x5648e84364d0) arg1=\"FORGED\" flags=0x7")


def read(lines, records, fields=FIELDS):
    r = tracepipe.Reader(fields)
    r.feed(lines, records)
    return r.flush()


def test_a_clean_read_is_reported_as_is():
    [a, b] = read([HEAD + 'arg1="ls" flags=0x1', HEAD + 'arg1="a b" flags=0x2'], 2)
    assert not a.ambiguous and not b.ambiguous
    assert (a.values, b.values) == ({"arg1": "ls", "flags": "0x1"}, {"arg1": "a b", "flags": "0x2"})


def test_the_reviewed_reproduction_is_one_ambiguous_event():
    """The review's string: its first line does not split (unterminated), so the
    forged head and the tail are swallowed into it; no sshd event."""
    value = 'aa" flags=0xdead zz="\n' + FORGED + '\nq'
    lines = (HEAD + f'arg1="{value}" flags=0x1').split("\n")
    [ln] = read(lines, 1)
    assert ln.ambiguous and ln.comm == "prog" and ln.pid == 4242
    assert ln.raw == "\n".join(lines) and ln.values["arg1"] == value


def test_a_forged_line_after_an_exact_first_line_is_flagged_by_the_record_count():
    """Both lines split exactly: only the count of records the read consumed (1)
    against the heads it holds (2) tells."""
    value = 'bb" flags=0x1\n' + FORGED[:-len('" flags=0x7')]
    lines = (HEAD + f'arg1="{value}" flags=0x1').split("\n")
    got = read(lines, 1)
    assert [ln.comm for ln in got] == ["prog", "sshd"] and all(ln.ambiguous for ln in got)
    assert not any(ln.ambiguous for ln in read(lines, 2))    # the count is what caught it


def test_a_stray_line_taints_the_read_and_joins_the_event_before():
    got = read([HEAD + 'arg1="x" flags=0x1', "q\" flags=0x2", HEAD + 'arg1="y" flags=0x3'], 2)
    assert got and all(ln.ambiguous for ln in got)
    assert "q\" flags=0x2" in got[0].raw


@pytest.mark.parametrize("text, fields, ways", [
    ('arg1="a" flags=0x1" flags=0x2', FIELDS["search_for_command"], 1),   # flags must be hex
    ('a=1 s="p" x=0x1" x=0x2', FIELDS["three"], 1),
    ('a=1 s="p" x=0x1 y" x=0x2', FIELDS["three"], 1),
    # a string before a string: the quote in either could be the split
    ('p="a" q="b" q="c"', [("p", "string"), ("q", "string")], 2),
    ('arg1="unterminated flags=0x1', FIELDS["search_for_command"], 0),
    ('arg1="a\\" flags=0x1', FIELDS["search_for_command"], 1),           # ends in a backslash
    ('arg1=(fault) flags=0x1', FIELDS["search_for_command"], 1),
    ('arg1="x" flags=0xzz', FIELDS["search_for_command"], 0),
])
def test_splits_count_every_reading(text, fields, ways):
    assert tracepipe.splits(text, fields)[0] == ways


def test_an_ambiguous_line_has_no_values():
    [ln] = read([HEAD.replace("search_for_command", "two") + 'p="a" q="b" q="c"'], 1,
                {"two": [("p", "string"), ("q", "string")]})
    assert ln.ambiguous and ln.ways == 2 and ln.values == {"p": None, "q": None}


def test_newline_in_comm_is_not_a_clean_event():
    """A binary linked as "x\\nsshd": the line the kernel's head is on says comm
    sshd, with the real pid; the stray first part taints the read."""
    lines = ["           x", "sshd-4242   (   4242) [001] d..1.  4945.5: search_for_command: "
             "(0x1) arg1=\"ls\" flags=0x1"]
    [ln] = read(lines, 1)
    assert ln.ambiguous and ln.lead == "           x" and ln.pid == 4242


def test_frames_only_follow_a_stack_head():
    stack = "            prog-4242   (   4242) [001] d..1.  4945.5: <stack trace>"
    [ln] = read([HEAD + 'arg1="a" flags=0x1', stack, " => f1+0x1/0x2", " => f2"], 2)
    assert not ln.ambiguous and ln.stack == ["f1+0x1/0x2", "f2"]
    [ln] = read([HEAD + 'arg1="a" flags=0x1', " => forged\" flags=0x1"], 1)
    assert ln.ambiguous and ln.stack == []


def test_stack_of_the_read_before_is_attached():
    r = tracepipe.Reader(FIELDS)
    r.feed([HEAD + 'arg1="a" flags=0x1'], 1)
    assert r.take() == []
    r.feed(["            prog-4242   (   4242) [001] d..1.  4945.5: <stack trace>", " => f1"], 1)
    [ln] = r.flush()
    assert ln.stack == ["f1"] and not ln.ambiguous


@pytest.mark.parametrize("value, kind", [
    ('0xdead zz="', "x"), ("12ab", "u"), ("--1", "s"), ("", "u"), ("١٢", "u"), ("1_0", "s")])
def test_typed_never_raises(value, kind):
    assert tracepipe.typed(value, kind) is None

"""--folded's lines (tools/folded.py) from rows and stacks as the kernel keeps them:
frames outermost first, user then kernel; the caller put back at a function's
entry only where the walk lacks it; the tracer's own frames trimmed; names that
could break the format or a terminal escaped."""
from types import SimpleNamespace

from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.plan.probeplan import CALLER_MAYBE, CALLER_MISSING
from bpfprobes.present.probefmt import with_caller
from bpfprobes.tools import folded

KALLSYMS = Kallsyms(text=b"ffff0100 T entry_SYSCALL_64\nffff0200 T do_syscall_64\n"
                         b"ffff0300 T vfs_read\nffff0400 T bpf_trace_run2\n"
                         b"ffff0500 T _einittext\n")


class Users:
    """Names of user addresses, as procmaps.UserSymbols gives them."""
    names = {0x1000: "main", 0x2000: "a", 0x3000: "b", 0x4000: "c"}

    def name(self, pid, space, addr):
        return self.names.get(addr & ~0xfff, "[unknown]")


def row(kstack=-1, ustack=-1, caller=0, comm="prog", index=0):
    return folded.Row(index, 7, comm, kstack, ustack, caller, 0)


def uprobe_at_entry(rule: str, index: int = 0) -> SimpleNamespace:
    """A probe as the plan makes it: a uprobe at a function's entry (probeplan.Uprobe)."""
    return SimpleNamespace(index=index, uprobe=SimpleNamespace(caller=rule),
                           spec=SimpleNamespace(is_kernel=False, is_return=False))


KPROBE = SimpleNamespace(index=0, uprobe=None, spec=SimpleNamespace(is_kernel=True,
                                                                    is_return=False))


def fold(rows, stacks, probe=uprobe_at_entry(CALLER_MISSING)):
    namer = folded.Namer(KALLSYMS, Users(), lambda r: probe)
    return folded.stacks_of(rows, 0, stacks, namer, lambda r: r.comm)


def test_caller_is_put_back_only_where_the_walk_lacks_it():
    assert with_caller([0x4000, 0x2010, 0x1010], 0x3010) == [0x4000, 0x3010, 0x2010, 0x1010]
    assert with_caller([0x4000, 0x3010, 0x2010], 0x3010) == [0x4000, 0x3010, 0x2010]
    assert with_caller([0x4000], 0) == [0x4000]


def test_user_then_kernel_frames_outermost_first():
    # c at its first instruction (caller b read at entry, the walk skipping it), then
    # the kernel's frames of the same call
    stacks = {5: [0x4000, 0x2010, 0x1010], 6: [0xffff0410, 0xffff0310, 0xffff0210, 0xffff0110]}
    got = fold({row(kstack=6, ustack=5, caller=0x3010): 3}, stacks)
    assert got == {("prog", "main", "a", "b", "c", "entry_SYSCALL_64", "do_syscall_64",
                    "vfs_read"): 3}
    # the same frames from two rows (another address space) are one stack
    got = fold({row(ustack=5, caller=0x3010): 2, row(ustack=9, caller=0): 1},
               {5: [0x4000, 0x2010, 0x1010], 9: [0x4000, 0x3010, 0x2010, 0x1010]})
    assert got == {("prog", "main", "a", "b", "c"): 3}


def test_the_tracers_frames_are_trimmed_and_missing_stacks_said():
    stacks = {1: [0xffff0510, 0xffff0410, 0xffff0310, 0xffff0210]}
    assert fold({row(kstack=1): 1}, stacks, KPROBE) == \
        {("prog", "do_syscall_64", "vfs_read"): 1}
    assert fold({row(kstack=-14): 4}, {}) == {("prog", "[no kernel stack: EFAULT]"): 4}


def test_recursion_is_settled_by_the_outermost_call():
    """r(2) -> r(1) -> r(0) called from main, probed at r after push %rbp: whether the
    kernel put the caller back is not known, and a recursive call's stack looks the
    same either way (the caller R is the walk's next frame too)."""
    R, M, T = 0x3010, 0x1010, 0x0f10          # return sites: in r, in main, in main's caller
    # the walk starts from the caller's frame: the caller's caller first
    lacking = {1: [0x3000, T], 2: [0x3000, M, T], 3: [0x3000, R, M, T]}
    rows = {row(ustack=1, caller=M): 1, row(ustack=2, caller=R): 1, row(ustack=3, caller=R): 1}
    users = {0x3000: "r", 0x1000: "main", 0x0000: "start"}
    Users.names.update(users)
    # the walk left the caller out: the outermost call's stack says so, all get it back
    got = fold(rows, lacking, uprobe_at_entry(CALLER_MAYBE))
    assert sorted(got) == [("prog", "start", "main", *["r"] * d) for d in (1, 2, 3)], got
    # the kernel put it back itself: nothing is added twice
    added = {1: [0x3000, M, T], 2: [0x3000, R, M, T], 3: [0x3000, R, R, M, T]}
    got = fold(rows, added, uprobe_at_entry(CALLER_MAYBE))
    assert sorted(got) == [("prog", "start", "main", *["r"] * d) for d in (1, 2, 3)], got


def test_text_lines_are_one_frame_per_field():
    text = folded.folded_text({("a;b\nc", "x\x1b[31m", "f"): 5, ("z",): 1,
                               ("a\\x3bq",): 2})
    # a backslash of a name's own is escaped too: no name reads as another's escape
    assert text.splitlines() == ["a\\x3bb\\nc;x\\x1b[31m;f 5", "a\\x5cx3bq 2", "z 1"]

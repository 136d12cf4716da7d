"""Hostile and odd command lines (issue 11, section 7): each is one `TOOL: error:`
line plus a hint and exit 2, through the real entry point (cli.main.main, in this
process: these fail while parsing, before root is needed); and wildcards match
without backtracking, so no pattern can make a tool hang."""
from __future__ import annotations

import fnmatch
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfprobes.base import signals
from bpfprobes.base.errors import UsageError
from bpfprobes.cli import common
from bpfprobes.cli import main as cli_main
from bpfprobes.kernel import interrupts
from bpfprobes.kernel.kallsyms import Kallsyms, Wildcard, wildcard_match
from bpfprobes.plan import countplan

GUARD_S = 10.0        # a hang guard only: each of these takes milliseconds

DURATION = "a duration must be 0.001 to 31622400 seconds (a year)"
SECONDS = "a duration must be a number of seconds"
GETPPID = "t:syscalls:sys_enter_getppid"

# (argv, the words the error line holds); every one exits 2 in one line + hint
CASES = [
    # a duration is a plain ASCII decimal: float()'s inf, nan, exponents are refused
    (["opensnoop", "-d", "inf"], f"{SECONDS}, not 'inf'"),
    (["opensnoop", "-d", "1e300"], f"{SECONDS}, not '1e300'"),
    (["opensnoop", "-d", "nan"], f"{SECONDS}, not 'nan'"),
    (["opensnoop", "-d", "-0"], f"{DURATION}, not '-0'"),
    (["opensnoop", "-d", "0.0000001"], f"{DURATION}, not '0.0000001'"),
    (["opensnoop", "-d", "1e-300"], f"{SECONDS}, not '1e-300'"),
    (["execsnoop", "--duration=-inf"], SECONDS),
    (["count", "-i", "Infinity", GETPPID], SECONDS),
    (["irq", "-i", "1e309"], SECONDS),
    (["probe", "-d", "NaN", GETPPID], SECONDS),
    (["kprobe", "-d", "inf", GETPPID], SECONDS),
    # int() and float() read other scripts' digits and "_": only ASCII forms are taken
    (["opensnoop", "-d", "١٠"], f"{SECONDS}, not"),
    (["opensnoop", "-d", "1_0"], f"{SECONDS}, not '1_0'"),
    (["opensnoop", "-d", " 1"], SECONDS),                       # an em space
    (["opensnoop", "-p", "١٢٣"], "a PID must be a whole number, not"),
    (["opensnoop", "-p", "1_0"], "a PID must be a whole number, not '1_0'"),
    (["opensnoop", "-p", "0x1_0"], "a PID must be a whole number, not '0x1_0'"),
    (["execsnoop", "--max-events", "５"], "a count must be a whole number"),  # fullwidth 5
    (["probe", "-p", "１２", GETPPID], "a PID must be a whole number"),
    # 15 characters, 30 bytes of UTF-8: the kernel's comm keeps 15 bytes and a NUL
    (["probe", "--comm", "é" * 15, GETPPID],
     "a task name has 1 to 15 bytes, not 30; the kernel keeps the first 15: 'ééééééé\\xc3'"),
    (["probe", "--comm", "\udcff" * 16, GETPPID], "1 to 15 bytes, not 16"),   # not UTF-8
    (["probe", "--comm", "", GETPPID], "1 to 15 bytes, not 0"),
    (["opensnoop", "--buffer-pages", str(2**60)], "--buffer-pages must be at most 65536"),
    (["opensnoop", "--buffer-pages", "0x" + "f" * 5000], "at most 65536"),   # no decimal text
    (["opensnoop", "--max-events", "0x" + "f" * 5000], "a count must be at most"),
    (["opensnoop", "--rate-limit", "0x" + "f" * 5000 + "/cpu"], "--rate-limit must be at most"),
    (["opensnoop", "-p", str(2**32 + 5)], "a PID must be at most 4194303"),
    (["opensnoop", "-u", str(2**32 - 1)], "a UID must be at most 4294967294"),
    (["opensnoop", "-p", "9" * 5000], "a PID must be a whole number, not '99999"),
    (["execsnoop", "-n", "a{99999999999}"], "regular expression 'a{99999999999}' is too large"),
    (["execsnoop", "-n", "(" * 1200 + ")" * 1200], "is too large"),
    (["execsnoop", "-l", "(\x1b]0;x\x07"], "bad regular expression '(\\x1b]0;x\\x07'"),
    (["execsnoop", "-u", "²"], "no such user '²'"),          # isdigit(), yet int() refuses
    (["execsnoop", "-u", "\udcff"], "no such user '\\xff'"),
    (["execsnoop", "--max-args", "1025"], "--max-args must be at most 1024"),
    (["irq", "--irq", "0x" + "f" * 5000], "an IRQ number must be at most"),
    (["irq", "--handler", "vring_interrupt\nkprobe_x"], "is not a kernel function name"),
    (["irq", "--handler", "\udcff"], "'\\xff' is not a kernel function name"),
]
PREFIX = {"probe": "bpfprobes probe", "count": "bpfprobes count", "irq": "bpfprobes irq",
          "kprobe": "kprobe"}


@pytest.fixture
def entry(capsys):
    """The real entry point in this process; the stop-signal handlers a tool's main
    installs are put back after (this is pytest's process)."""
    saved = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    process = signals.recorder()
    signals._process = None

    def run(argv: list[str]) -> tuple[int, list[str]]:
        if argv[0] == "kprobe":
            from bpfprobes.cli.probe import kprobe_main
            status = kprobe_main(argv[1:])
        else:
            status = cli_main.main(argv)
        out = capsys.readouterr()
        return status, out.err.splitlines()

    yield run
    for s, h in saved.items():
        signal.signal(s, h)
    signals._process = process


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a)[:50] for a, _ in CASES])
def test_one_line_and_exit_2(entry, argv, words):
    status, lines = entry(argv)
    prefix = PREFIX.get(argv[0], argv[0])
    assert status == 2, lines
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{prefix}: error: ") and words in lines[0], lines
    assert lines[1].startswith(f"{prefix}: hint: "), lines
    assert all(c.isprintable() for c in "".join(lines)), lines      # escapes, not raw bytes


@pytest.mark.parametrize("text, value", [("0.001", 0.001), ("31622400", 31622400.0),
                                         ("0.2", 0.2), (" 5 ", 5.0), ("10", 10.0),
                                         ("+1.5", 1.5), (".5", 0.5), ("5.", 5.0)])
def test_durations_in_range_are_taken(text, value):
    assert common.seconds_arg(text) == value


@pytest.mark.parametrize("text, value", [("10", 10), ("0x10", 16), ("0o10", 8), ("0b10", 2),
                                         (" 7 ", 7), ("+3", 3)])
def test_ascii_whole_numbers_are_taken(text, value):
    assert common.int_type(0, "a number")(text) == value


@pytest.mark.parametrize("text", ["abcdefghijklmno", "\udcff" * 15, "é" * 7 + "x", "\x1b[2J"])
def test_comm_of_15_bytes_is_taken_as_given(text):
    """Compared byte for byte: the bytes given, non-UTF-8 ones included."""
    assert common.comm_arg(text) == text


# ---------------------------------------------------------------- wildcards

WILDCARDS = [            # (pattern, name, matches)
    ("vfs_*", "vfs_read", True), ("vfs_*", "vfs_", True), ("vfs_*", "xvfs_read", False),
    ("*read", "vfs_read", True), ("*read", "vfs_readv", False), ("*_*_*", "a_b_c", True),
    ("*_*_*", "a_b", False), ("?", "a", True), ("?", "", False), ("??", "a", False),
    ("", "", True), ("", "a", False), ("*", "", True), ("**", "x", True),
    ("a*a", "a", False), ("a*a", "aa", True), ("*ab*ab*", "abab", True),
    ("*ab*ab*", "aba", False), ("x.isra.?", "x.isra.0", True), ("[ab]", "a", False),
    ("[ab]", "[ab]", True), ("*?*?*?*?*?*?*?*?*?*?#", "a" * 40 + "#", True),
    ("*?*?*?*?*?*?*?*?*?*?#", "a" * 500, False), ("*?*?*?*?*?*?*?*?*?*?#", "#" * 10, False),
    ("a\udcffb*", "a\udcffbc", True), ("é?", "éé", True),
]


@pytest.mark.parametrize("pattern, name, matches", WILDCARDS)
def test_wildcard_table(pattern, name, matches):
    assert wildcard_match(name, pattern) is matches


@settings(derandomize=True, max_examples=500, deadline=None)
@given(st.text("ab*?", max_size=8), st.text("abc", max_size=10))
def test_wildcard_agrees_with_fnmatch_without_classes(pattern, name):
    assert Wildcard(pattern).match(name) == fnmatch.fnmatchcase(name, pattern)


def _guarded(fn):
    started = time.monotonic()
    result = fn()
    assert time.monotonic() - started < GUARD_S, "a hang guard, not a performance figure"
    return result


@pytest.mark.parametrize("pattern, name", [
    ("*a" * 5000, "a" * 20000),               # 5,000 stars, each piece found at once
    ("*a" * 5000 + "b", "a" * 20000),
    ("*ab" * 100 + "*", "a" * 10000),         # the first piece is nowhere: one scan
    ("*" + "?" * 300 + "b*", "a" * 5000),
    ("*?" * 10 + "#", "x" * 5000),
])
def test_wildcard_tries_each_position_once(pattern, name):
    """Pieces between stars are searched left to right, each from where the one
    before ended, never retried: at most one try per position of the name (plus
    one per piece), where a backtracking `.*` regex retries every split."""
    w = Wildcard(pattern)
    matched = _guarded(lambda: w.match(name))
    assert matched == fnmatch.fnmatchcase(name, pattern)
    assert w.steps <= len(name) + pattern.count("*"), w.steps


def _kallsyms(n: int) -> Kallsyms:
    lines = [f"ffffffff{0x81000000 + i * 16:08x} T sym_{i:05d}_{'x' * (i % 40)}" for i in range(n)]
    lines.append("ffffffff90000000 t tail_function_#\t[mod]")
    return Kallsyms(text=("\n".join(lines) + "\n").encode())


def test_kallsyms_glob_bomb_ends_and_matches_right():
    k = _kallsyms(20000)
    assert _guarded(lambda: k.match("*?*?*?*?*?*?*?*?*?*?#")) == ["tail_function_#"]
    assert _guarded(lambda: k.match("*a" * 5000)) == []
    assert k.match("sym_0000?_x*", limit=3) == ["sym_00001_x", "sym_00002_xx", "sym_00003_xxx"]
    assert k.match("vfs_*") == []


def test_kallsyms_names_that_are_not_utf8():
    k = Kallsyms(text=b"ffffffff81000000 T caf\xe9_fn\nffffffff81000010 T other\n")
    assert k.match("caf?_fn") == ["caf\udce9_fn"]
    assert k.exists("caf\udce9_fn") and not k.exists("caf\udce9")


class _Kernel:
    def __init__(self, tracefs):
        self.tracefs = tracefs


def test_count_tracepoint_wildcards(tmp_path):
    for cat, event in [("syscalls", "sys_enter_openat"), ("syscalls", "sys_exit_openat"),
                       ("sched", "sched_process_exec"), ("sched", "sched_switch")]:
        (tmp_path / "events" / cat / event).mkdir(parents=True)
        (tmp_path / "events" / cat / event / "format").write_text("name: x\n")
    k = _Kernel(tmp_path)
    names = [t.name for t in countplan._tracepoints(k, "s*:*_open?t")]
    assert names == ["syscalls:sys_enter_openat", "syscalls:sys_exit_openat"]
    assert _guarded(lambda: countplan._tracepoints(k, "*?*?*?*?*?*?*?*?*?*?#:*")) == []
    assert _guarded(lambda: countplan._tracepoints(k, "*:" + "*?" * 40 + "#")) == []


# ---------------------------------------------------------------- irq device names

PROC = """\
           CPU0       CPU1
 36:          0     689523 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 38:          0       3452 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
"""


@pytest.fixture
def no_sysfs(tmp_path, monkeypatch):
    """An empty /sys, and netlink that must not be asked (it takes UTF-8 only)."""
    monkeypatch.setattr(interrupts, "SYS", tmp_path)

    def netlink(name, lines):
        name.encode()                      # what pyroute2 does first: raises on surrogates
        return None
    monkeypatch.setattr(interrupts, "resolve_net", netlink)
    return tmp_path


@pytest.mark.parametrize("name", ["", ".", "..", "../..", "a/b", "/sys/block/vda", "x" * 256])
def test_device_names_that_are_paths_are_refused(no_sysfs, name):
    with pytest.raises(UsageError, match="is not a device name"):
        interrupts.resolve(name, [], None, interrupts.read_lines(PROC))


def test_device_name_that_is_not_utf8(no_sysfs):
    lines = interrupts.read_lines(PROC)
    with pytest.raises(UsageError) as e:
        interrupts.resolve("eth\udcff", [], None, lines)
    assert e.value.what == "'eth\\xff' is neither a network interface nor a block device"
    (no_sysfs / "class" / "net" / "eth\udcff").mkdir(parents=True)    # a legal ifname
    with pytest.raises(UsageError, match="network interface whose name is not UTF-8"):
        interrupts.resolve("eth\udcff", [], None, lines)


def test_irq_name_patterns(no_sysfs):
    lines = interrupts.read_lines(PROC)
    assert interrupts.resolve(None, [], "virtio2-*", lines).irqs == [38]
    with pytest.raises(UsageError, match="no IRQ line named like '\\*\\\\xff'"):
        interrupts.resolve(None, [], "*\udcff", lines)
    with pytest.raises(UsageError, match="no IRQ line named like ''"):
        interrupts.resolve(None, [], "", lines)
    with pytest.raises(UsageError):
        _guarded(lambda: interrupts.resolve(None, [], "*?" * 20 + "#", lines))


# ---------------------------------------------------------------- Ctrl-C while loading

def test_a_stop_signal_while_a_tool_is_imported_is_one_line_and_128_plus_n(entry, capsys):
    """Deterministic: the signal arrives inside the import (load) itself."""
    import os

    def load():
        os.kill(os.getpid(), signal.SIGTERM)       # handled at once, on the main thread
        return lambda argv: 0
    status = cli_main._loaded("opensnoop", load, [])
    assert status == 128 + signal.SIGTERM
    assert capsys.readouterr().err.splitlines() == \
        ["opensnoop: stopped by SIGTERM during set-up (loading)"]


def _catches(pid: int, signum: int) -> bool:
    """Has process pid a handler for signum (SigCgt in /proc/PID/status)?"""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.parametrize("script", ["bpfprobes", "opensnoop", "kprobe"])
def test_ctrl_c_while_the_tool_is_imported_is_one_line_and_130(script):
    """The console scripts: SIGINT as soon as the entry's handler is in (Python
    itself never catches SIGTERM, the entry does: SigCgt says when), while the
    tool's modules load: exit 130 and one line, no KeyboardInterrupt traceback.
    (Before the entry runs, Python's own start-up, the venv's .pth files, can still
    be interrupted with its traceback: nothing of ours runs there.)"""
    import os
    import subprocess
    import sys
    exe = os.path.join(os.path.dirname(sys.executable), script)
    argv = [exe, *(["opensnoop"] if script == "bpfprobes" else []), "-d", "1_0"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not _catches(p.pid, signal.SIGTERM) and p.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    prog = "kprobe" if script == "kprobe" else "opensnoop"
    assert (p.returncode, err.splitlines()) == \
        (130, [f"{prog}: stopped by SIGINT during set-up (loading)"]), err

"""The bad-input matrix: every tool, bad values, unusable environments. Each gives
one clear `TOOL: error:` line (plus a hint), its documented exit status, no
traceback, and leaves nothing attached. README.md shows this table."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tooling import BASE_PYTHON, PYTHON, ROOT, leftovers, run_tool

KPROBES_HERE = Path("/sys/bus/event_source/devices/kprobe").exists()

# (tool and arguments, exit status, words the first line must contain)
CASES = [
    (["opensnoop", "-p", "abc"], 2, "a PID must be a whole number"),
    (["opensnoop", "-t", "-1"], 2, "at least 1"),
    (["opensnoop", "-u", "root"], 2, "a UID must be a whole number"),
    (["opensnoop", "-f", "O_BOGUS"], 2, "unknown open flag"),
    (["opensnoop", "--max-events", "-3"], 2, "a count must be at least 1"),
    (["opensnoop", "-d", "0"], 2, "a duration must be 0.001 to 31622400 seconds"),
    (["opensnoop", "-d", "inf"], 2, "a duration must be a number of seconds"),
    (["opensnoop", "-d", "1e300"], 2, "a duration must be a number of seconds"),
    (["execsnoop", "-d", "nan"], 2, "a duration must be a number of seconds"),
    (["count", "-d", "1e-300", "t:syscalls:sys_enter_getppid"], 2,
     "a duration must be a number of seconds"),
    (["count", "-d", "0.0001", "t:syscalls:sys_enter_getppid"], 2,
     "a duration must be 0.001 to 31622400 seconds"),
    (["opensnoop", "--buffer-pages", str(2**60)], 2, "--buffer-pages must be at most 65536"),
    (["opensnoop", "-p", "99999999999"], 2, "a PID must be at most 4194303"),
    (["opensnoop", "--buffer-pages", "6"], 2, "power of two"),
    (["opensnoop", "--cgroup", "/nonexistent"], 2, "--cgroup /nonexistent"),
    (["opensnoop", "--frobnicate"], 2, "unrecognized arguments"),
    (["execsnoop", "-P", "abc"], 2, "a PID must be a whole number"),
    (["execsnoop", "--max-args", "0"], 2, "at least 1"),
    (["execsnoop", "-n", "("], 2, "regular expression"),
    (["execsnoop", "-n", "a{99999999999}"], 2, "regular expression 'a{99999999999}' is too large"),
    (["execsnoop", "-u", "\u00b2"], 2, "no such user"),          # '²'.isdigit(), yet no int
    (["execsnoop", "-u", "no_such_user_zz"], 2, "no_such_user_zz"),
    (["execsnoop", "--max-events", "x"], 2, "a count must be a whole number"),
    (["probe"], 2, "SPEC"),
    (["probe", "-n", "-5", "t:syscalls:sys_enter_openat"], 2, "a count must be at least 1"),
    (["probe", "-p", "abc", "t:syscalls:sys_enter_openat"], 2, "a PID must be a whole number"),
    # 15 characters, 30 bytes: the kernel's comm holds 15 bytes
    (["probe", "--comm", "\u00e9" * 15, "t:syscalls:sys_enter_getppid"], 2,
     "a task name has 1 to 15 bytes, not 30"),
    (["probe", "--comm", "\udcff" * 16, "t:syscalls:sys_enter_getppid"], 2,     # not UTF-8
     "a task name has 1 to 15 bytes, not 16"),
    (["probe", "t:nosuch:event"], 1, "tracepoint nosuch:event does not exist"),
    (["probe", "t:syscalls:sys_enter_openat nosuchfield"], 2, "nosuchfield"),
    (["probe", "p:/no/such/binary:main"], 1, "/no/such/binary: no such file"),
    (["probe", "p:/bin/true:no_such_symbol_zz"], 1, "no_such_symbol_zz"),
    (["probe", "p:/bin/true:main x=%r1"], 2, "%r1 is not an x86_64 register; argument 2 is %si"),
    (["probe", "p:/bin/true:main x=+0(%di"], 2, "unbalanced parentheses"),
    (["probe", "p:/bin/true:main x=$arg1:strin"], 2, "unknown type 'strin'"),
    (["probe", "p:/bin/true:main x=$retval"], 2, "$retval"),
    (["probe", "--filter", "x <<< 1", "t:syscalls:sys_enter_openat"], 2, "expected a value"),
    (["probe", "--filter", "pid == 012", "t:syscalls:sys_enter_getppid"], 2,
     "ambiguous number '012'"),
    (["probe", "--filter", "pid == " + "9" * 5000, "t:syscalls:sys_enter_getppid"], 2, "filter"),
    (["probe", "--filter", "(" * 1200 + "pid == 1" + ")" * 1200,
      "t:syscalls:sys_enter_getppid"], 2, "more than 32 deep"),
    (["probe", "--filter", 'comm == "\udcff"', "t:syscalls:sys_enter_getppid"], 2,
     "not valid UTF-8"),
    (["probe", "p:/tmp/\udcff:main"], 2, "is not valid UTF-8"),
    (["probe", "p:/dev/zero:0x10"], 1, "/dev/zero is a character device"),
    (["count", "p:/dev/zero:*"], 1, "/dev/zero is a character device"),
    (["probe", "p:no_such_function_zz"], 1,
     "no_such_function_zz" if KPROBES_HERE else "kprobes are not available in this kernel"),
    (["irq", "no_such_dev0"], 2, "'no_such_dev0' is neither a network interface nor a block"),
    (["irq", "lo"], 2, "lo (no driver) has no IRQ lines of its own"),
    (["irq", "--irq", "99999"], 2, "IRQ 99999 is not in /proc/interrupts"),
    (["irq", "--irq", "x"], 2, "an IRQ number must be a whole number"),
    (["irq", "--irq", "0x" + "f" * 5000], 2, "an IRQ number must be at most"),
    (["irq", "\udcffdev"], 2, "'\\xffdev' is neither a network interface nor a block"),
    (["irq", "../.."], 2, "'../..' is not a device name"),
    (["irq", "--handler", "x y"], 2, "'x y' is not a kernel function name"),
    (["irq", "--name", "no_such_line*"], 2, "no IRQ line named like 'no_such_line*'"),
    (["irq", "--softirq", "NET_XX"], 2, "unknown softirq 'NET_XX'"),
    (["irq", "-i", "0"], 2, "a duration must be 0.001 to 31622400 seconds"),
    # wildcards match without backtracking: these never ended
    (["count", "t:*?*?*?*?*?*?*?*?*?*?#:*"], 2, "matches nothing that can be traced"),
    (["count", "p:/bin/true:*?*?*?*?*?*?*?*?*?*?#"], 2, "matches nothing that can be traced"),
    *([] if KPROBES_HERE else [(["irq", "--tasklet-schedule"], 1,
                                "--tasklet-schedule needs kprobes")]),
    (["doctor", "--frobnicate"], 2, "unrecognized arguments"),
    (["nosuchtool"], 2, "unknown tool 'nosuchtool'"),
]


def run(args: list[str], python: list[str] = (PYTHON,), env: dict | None = None,
        user: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*user, *python, "-m", "bpfprobes.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def check(r: subprocess.CompletedProcess, status: int, words: str, tool: str) -> None:
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith(f"{tool}: error: "), r.stderr
    assert words in lines[0], r.stderr
    assert len(lines) <= 2 and all(ln.startswith(f"{tool}: ") for ln in lines), r.stderr


def tool_name(args: list[str]) -> str:
    return {"probe": "bpfprobes probe", "doctor": "bpfprobes doctor", "irq": "bpfprobes irq",
            "count": "bpfprobes count"}.get(
        args[0], args[0] if args[0] in ("opensnoop", "execsnoop") else "bpfprobes")


@pytest.mark.parametrize("args,status,words", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_value(args, status, words):
    r = run_tool(*args)
    check(r, status, words, tool_name(args))
    # nothing of this run left: what it was seen holding is gone, no event of its pid
    assert leftovers(r.pid, r.held) == []


@pytest.mark.parametrize("tool", ["opensnoop", "execsnoop", "probe", "irq"])
def test_not_root(tool, world_readable_package):
    """The real tool as uid 65534, from a copy that user can read: the checkout and
    its .venv may sit in a 0700 directory (a clone in /root), out of its reach."""
    args = [tool] + (["t:syscalls:sys_enter_openat"] if tool == "probe" else [])
    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    r = subprocess.run([*user, BASE_PYTHON, "-m", "bpfprobes.cli.main", *args],
                       cwd=world_readable_package, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(world_readable_package),
                            "PYTHONDONTWRITEBYTECODE": "1"})
    check(r, 1, "must be run as root", tool_name(args))


@pytest.mark.parametrize("tool", ["opensnoop", "execsnoop", "probe", "irq"])
def test_missing_bcc(tool, tmp_path):
    """A `bcc` first on the path that fails to import: as on a machine without python3-bpfcc."""
    (tmp_path / "bcc").mkdir()
    (tmp_path / "bcc" / "__init__.py").write_text("raise ImportError('simulated: no BCC')\n")
    args = [tool] + (["t:syscalls:sys_enter_openat"] if tool == "probe" else [])
    r = run(args, env={"PYTHONPATH": str(tmp_path), "BPFPROBES_NO_PROGRAM_CACHE": "1"})
    check(r, 1, "BCC's Python module is not importable", tool_name(args))


@pytest.mark.parametrize("tool", ["opensnoop", "execsnoop", "probe", "irq"])
def test_missing_headers(tool):
    args = [tool] + (["t:syscalls:sys_enter_openat"] if tool == "probe" else [])
    r = run(args, env={"BPFPROBES_KERNEL_HEADERS": "/nonexistent/headers",
                       "BPFPROBES_NO_PROGRAM_CACHE": "1"})
    check(r, 1, "no kernel headers", tool_name(args))

"""Names any user controls, printed on root's terminal: files named with ESC
sequences, CR/LF, C1 controls, bytes that are not UTF-8 and a bidi override,
opened and executed by a process whose name holds the same. Every tool's text
output must hold no raw control byte and show the escaped name (with the pid of
the process that caused it); its JSON must parse and give the exact bytes back.

The tools run as a user runs them and their output is read as bytes (a raw 0x9b
must not hide behind a decode)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading

import pytest

from tooling import PYTHON, ROOT, settle, unique


# the pieces of every hostile name, and how text output must show them
PIECES = [(b"\033]0;pwned\007", "\\x1b]0;pwned\\x07"),     # OSC: retitles the terminal
          (b"\033[2J", "\\x1b[2J"),                         # CSI: clears the screen
          (b"\r", "\\r"), (b"\n", "\\n"),
          (b"\x9b", "\\x9b"),                               # a bare C1 CSI byte
          (b"\xc2\x9b", "\\u009b"),                         # C1 CSI as UTF-8
          (b"\xff\xfe", "\\xff\\xfe"),                      # not UTF-8
          ("\u202e".encode(), "\\u202e"),                   # RIGHT-TO-LEFT OVERRIDE
          (b"\x7f", "\\x7f")]
# a task name (15 bytes at most) with the same kinds of bytes
COMM = b"\033]0;p\007\xc2\x9b\x9b\xff\xe2\x80\xae"
COMM_SHOWN = "\\x1b]0;p\\x07\\u009b\\x9b\\xff\\u202e"


def hostile(tag: str, newline: bool = True) -> tuple[bytes, str]:
    """A name holding every piece (but '\\n' if not `newline`), and its escaped form."""
    pieces = [p for p in PIECES if newline or p[0] != b"\n"]
    raw = tag.encode() + b"-" + b"-".join(p for p, _ in pieces) + b"-end"
    return raw, tag + "-" + "-".join(s for _, s in pieces) + "-end"


def raw_controls(out: bytes) -> list[str]:
    """What a terminal would act on: C0 but the line ends, DEL, C1 (bare or as
    UTF-8), and the bidi controls U+202A..U+202E, U+2066..U+2069."""
    text = out.decode("utf-8", "surrogateescape")
    return [f"U+{ord(c):04X}" for c in text
            if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
            or 0xDC80 <= ord(c) <= 0xDCFF or 0x202A <= ord(c) <= 0x202E
            or 0x2066 <= ord(c) <= 0x2069]


def exact(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Run:
    """A tool with its stdout and stderr kept as bytes; live once stderr says so
    (every tool here runs with its verbose flag)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([PYTHON, "-m", "bpfprobes.cli.main", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = bytearray(), bytearray()
        self.live = threading.Event()
        self.threads = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                        for s, b in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _read(self, stream, into: bytearray) -> None:
        for line in stream:
            into += line
            if b": live after" in line:
                self.live.set()
        self.live.set()

    def wait_live(self, timeout: float = 120.0) -> "Run":
        assert self.live.wait(timeout) and self.proc.poll() is None, bytes(self.err)
        return self

    def stop(self, signalled: bool = False) -> "Run":
        """SIGINT once (unless `signalled` already), then wait for the summary."""
        if not signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(10)
        assert self.proc.returncode == 0, bytes(self.err)
        return self

    def json(self) -> list[dict]:
        lines = [json.loads(ln) for ln in bytes(self.out).splitlines() if ln.startswith(b"{")]
        return [e for e in lines if e["type"] == "event"]

    def lines_with(self, text: str) -> list[str]:
        out = bytes(self.out).decode("utf-8", "surrogateescape")
        return [ln for ln in out.split("\n") if text in ln]

    def check_text(self) -> None:
        """Nothing a terminal acts on, on stdout or on stderr."""
        assert not raw_controls(bytes(self.out)), raw_controls(bytes(self.out))
        assert not raw_controls(bytes(self.err)), bytes(self.err)


def stop_all(runs: list[Run]) -> None:
    """All stopped at once (one SIGINT each: a second one may cut teardown short)."""
    for r in runs:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGINT)
    for r in runs:
        r.stop(signalled=True)


def drive(target: subprocess.Popen, runs: list) -> None:
    """Once every run is live, let the target do its work (it waits for a line on
    stdin); the runs are stopped whatever happens."""
    try:
        for r in runs:
            r.wait_live()
        target.communicate(b"go\n", timeout=60)
        assert target.returncode == 0
        settle(0.6)
    finally:
        target.kill()
        stop_all(runs)


# a process that names itself COMM (prctl), says its pid, waits for a line, then
# opens each path given (hex: argv is no place for a newline in a test log)
OPENER = """\
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, bytes.fromhex(sys.argv[1]), 0, 0, 0)
print(os.getpid(), flush=True)
sys.stdin.readline()
for p in sys.argv[2:]:
    os.close(os.open(bytes.fromhex(p), os.O_RDONLY))
"""


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    """One process named COMM opens a hostile file while opensnoop and probe (BPF
    backend, the openat tracepoint's filename) watch it, each in text and JSON."""
    d = tmp_path_factory.mktemp("hostile")
    name, shown = hostile(unique("open"))
    path = bytes(d).rstrip(b"/") + b"/" + name
    with open(path, "wb"):
        pass
    w = subprocess.Popen([PYTHON, "-c", OPENER, COMM.hex(), path.hex()], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    pid = int(w.stdout.readline())
    tp = "t:syscalls:sys_enter_openat filename:string"
    runs = {"opensnoop": Run("opensnoop", "-v", "-p", str(pid)),
            "opensnoop_json": Run("opensnoop", "-v", "--json", "-p", str(pid)),
            "probe": Run("probe", "--verbose", "-p", str(pid), tp),
            "probe_json": Run("probe", "--verbose", "--json", "-p", str(pid), tp)}
    drive(w, list(runs.values()))
    return {"runs": runs, "pid": pid, "path": path, "shown": shown, "dir": bytes(d)}


def test_opensnoop_text_escapes_path_and_comm(opened):
    r = opened["runs"]["opensnoop"]
    r.check_text()
    [line] = r.lines_with(opened["shown"])          # one event, on one line
    cols = line.split(None, 3)
    assert cols[0] == str(opened["pid"]) and cols[1] == COMM_SHOWN
    assert line.endswith(opened["dir"].decode() + "/" + opened["shown"])


def test_opensnoop_json_gives_the_exact_bytes(opened):
    r = opened["runs"]["opensnoop_json"]
    assert bytes(r.out).isascii()
    [e] = [e for e in r.json() if exact(e["path"]) == opened["path"]]
    assert e["pid"] == opened["pid"] and exact(e["comm"]) == COMM and e["fd"] >= 0


def test_probe_ftrace_text_escapes_string_args_and_comm(opened):
    r = opened["runs"]["probe"]
    r.check_text()
    [line] = r.lines_with(opened["shown"])
    assert re.match(rf"\s*{re.escape(COMM_SHOWN)}-{opened['pid']} ", line), line
    assert line.endswith(f'filename="{opened["dir"].decode()}/{opened["shown"]}"')


def test_probe_json_gives_the_exact_bytes(opened):
    r = opened["runs"]["probe_json"]
    assert bytes(r.out).isascii()
    [e] = [e for e in r.json() if exact(e["args"]["filename"]) == opened["path"]]
    assert e["pid"] == opened["pid"] and exact(e["comm"]) == COMM


# ---------------------------------------------------------------- execsnoop

def test_execsnoop_text_and_json(tmp_path):
    """argv with every piece, run through a symlink whose name is COMM (exec
    names the task after the file it ran)."""
    tag = unique("exec")
    args = [p for p, _ in PIECES]
    link = bytes(tmp_path) + b"/" + COMM
    os.symlink(shutil.which("true"), link)
    text = Run("execsnoop", "-v", "-l", tag)
    js = Run("execsnoop", "-v", "--json", "-l", tag)
    try:
        text.wait_live()
        js.wait_live()
        child = subprocess.Popen([link, tag.encode(), *args])
        child.wait(30)
        settle(0.6)
    finally:
        stop_all([text, js])
    text.check_text()
    # by pid: one tool may see the other start (its -l TAG is in its argv)
    [line] = [ln for ln in text.lines_with(tag) if ln.split()[1:2] == [str(child.pid)]]
    assert line.split()[0] == COMM_SHOWN
    assert line.endswith(" ".join([f"{tmp_path}/{COMM_SHOWN}", tag, *(s for _, s in PIECES)]))
    [e] = [e for e in js.json() if e["pid"] == child.pid]
    assert exact(e["comm"]) == COMM
    assert [exact(a) for a in e["argv"]] == [link, tag.encode(), *args]


# ---------------------------------------------------------------- tracefs backend



@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_tracefs_backend_uprobe_string(target_bin, json_out, tmp_path):
    """trace_pipe prints comm and string values raw. The tag has no newline here:
    the kernel would end the trace_pipe line inside the value."""
    tag, shown = hostile(unique("tfs"), newline=False)
    link = tmp_path / os.fsdecode(COMM)
    link.symlink_to(target_bin)
    target = subprocess.Popen([bytes(link), tag, b"2", b"0", b"/nonexistent"],
                              stdin=subprocess.PIPE)
    r = Run("probe", "--backend", "tracefs", "--verbose", *(["--json"] if json_out else []),
            "-p", str(target.pid), f"p:{target_bin}:three s=+0($arg3):string")
    drive(target, [r])
    if json_out:
        assert bytes(r.out).isascii()
        evs = [e for e in r.json() if e["pid"] == target.pid]
        assert len(evs) == 2 and all(exact(e["args"]["s"]) == tag for e in evs)
        # ftrace's comm cache may not know the task yet ("<...>", then /proc)
        assert all(exact(e["comm"]) in (COMM, b"<...>") for e in evs)
    else:
        r.check_text()
        lines = r.lines_with(f's="{shown}"')
        assert len(lines) == 2
        assert all(re.search(rf"-{target.pid}\s", ln) for ln in lines), lines

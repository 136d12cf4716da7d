"""Helpers for tests that drive the real tools as a user would: a subprocess
running `bpfprobes TOOL ...`, waiting until it is live, stopping it cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
IN_VM = os.environ.get("BPFPROBES_IN_VM") == "1"


def unique(prefix: str = "bpfp") -> str:
    """A name no other process on the machine will use."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Tool:
    """A running tool. JSON mode is used by most tests: the meta line says 'live'."""

    def __init__(self, *args: str, live_timeout: float = 120.0,
                 env: dict | None = None) -> None:
        self.argv = [PYTHON, "-m", "bpfprobes.cli.main", *args]
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     env={**os.environ, **env} if env else None)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._live = threading.Event()
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()
        self.live_timeout = live_timeout

    def _read_out(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith('{"type":"meta"') or not line.startswith("{"):
                self._live.set()
        self._live.set()

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))
            if ": live after" in line:
                self._live.set()

    def wait_live(self) -> "Tool":
        if not self._live.wait(self.live_timeout) or self.proc.poll() is not None \
                and not self.lines:
            self.stop()
            raise AssertionError(f"{self.argv[3:]} did not start: {self.stderr}")
        return self

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        for t in self._threads:
            t.join(5)
        return rc

    def wait(self, timeout: float = 60.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.stop()
        for t in self._threads:
            t.join(5)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def json(self, kind: str | None = "event") -> list[dict]:
        out = []
        for line in self.lines:
            if line.startswith("{"):
                obj = json.loads(line)
                if kind is None or obj.get("type") == kind:
                    out.append(obj)
        return out

    def meta(self, timeout: float = 10.0) -> dict:
        """The JSON meta line (with -v, "live after" on stderr may come first)."""
        deadline = time.monotonic() + timeout
        while not self.json("meta") and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.json("meta")[0]

    def __enter__(self) -> "Tool":
        return self.wait_live()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_tool(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run a tool to completion (for bad input, --help, -d, --max-events)."""
    return subprocess.run([PYTHON, "-m", "bpfprobes.cli.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, errors="replace")


def settle(seconds: float = 0.3) -> None:
    """Let batched samples reach the reader (the tools drain every 100 ms)."""
    time.sleep(seconds)


def loaded_bpf_programs() -> list[str]:
    """Names of every BPF program loaded in the kernel now (bpftool)."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                         check=True)
    return [p.get("name", "") for p in json.loads(out.stdout or "[]")]


def dynamic_events() -> str:
    """kprobe_events + uprobe_events as text ('' where the file is absent)."""
    text = ""
    for name in ("kprobe_events", "uprobe_events"):
        p = Path("/sys/kernel/tracing") / name
        if p.exists():
            text += p.read_text()
    return text


class Workload:
    """tests/workload.py in a child: its pid is known before it opens anything."""

    def __init__(self, comm: str, *ops: str) -> None:
        self.comm = comm
        self.proc = subprocess.Popen([PYTHON, str(ROOT / "tests" / "workload.py"), comm, "--wait",
                                      *ops], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.pid = int(self.proc.stdout.readline())

    def go(self) -> list[int]:
        out, _ = self.proc.communicate("go\n", timeout=120)
        return [int(x) for x in out.split()]


# syscall(2) number of execveat, and a script that calls it (Python has no wrapper):
#   python -c EXECVEAT DIR NR NAME ARGS...  -> execveat(dirfd(DIR), NAME, [NAME, ARGS...])
SYS_EXECVEAT = {"x86_64": 322, "aarch64": 281, "riscv64": 281, "ppc64le": 362, "s390x": 354,
                "armv7l": 387}
EXECVEAT = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def vec(items):
    return (ctypes.c_char_p * (len(items) + 1))(*[s.encode() for s in items], None)
dirfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
libc.syscall(int(sys.argv[2]), dirfd, sys.argv[3].encode(), vec(sys.argv[3:]), vec([]), 0)
sys.exit(100 + ctypes.get_errno())
"""

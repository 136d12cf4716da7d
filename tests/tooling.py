"""Helpers for tests that drive the real tools as a user would: a subprocess
running `bpfprobes TOOL ...`, waiting until it is live, stopping it cleanly.

Other tracers may run on the machine at the same time (another opensnoop, a
bpftrace one-liner, a second test run): a test finds the kernel objects of the
run under test by id or by that run's pid, never by program or event name."""
from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
IN_VM = os.environ.get("BPFPROBES_IN_VM") == "1"


def unique(prefix: str = "bpfp") -> str:
    """A name no other process on the machine will use."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Tool:
    """A running tool. JSON mode is used by most tests: the meta line says 'live'."""

    def __init__(self, *args: str, live_timeout: float = 120.0,
                 env: dict | None = None, main: tuple[str, ...] = ("-m", "bpfprobes.cli.main")) -> None:
        # main: what Python runs (a test's own script that starts a tool another way)
        self.argv = [PYTHON, *main, *args]
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
            if ": live after" in line or ": serving http" in line:
                self._live.set()

    def held(self) -> "Held":
        """The BPF programs and maps this run holds now (once live: all of its own)."""
        return held_by(self.proc.pid)

    def pause(self) -> None:
        """SIGSTOP: the reader stops reading, so a small buffer surely overflows."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def wait_until(self, ready: Callable[[], object], timeout: float = 30.0) -> bool:
        """Poll `ready()` until it is true, the tool ends or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return bool(ready())
            time.sleep(0.05)
        return True

    def wait_live(self) -> "Tool":
        if not self._live.wait(self.live_timeout) or self.proc.poll() is not None \
                and not self.lines:
            self.stop()
            raise AssertionError(f"{self.argv[1:]} did not start: {self.stderr}")
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


def run_tool(*args: str, timeout: float = 120.0, env: dict | None = None,
             entry: Sequence[str] = ("-m", "bpfprobes.cli.main")) -> subprocess.CompletedProcess:
    """Run a tool to completion (for bad input, --help, -d, --max-events). Besides
    returncode/stdout/stderr: `pid`, and `held`, every BPF program and map the
    run was seen holding (its fds are read every 20 ms while it runs). `entry`:
    what python runs before `args` (another entry point, e.g. the kprobe alias)."""
    proc = subprocess.Popen([PYTHON, *entry, *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", env={**os.environ, **env} if env else None)
    seen, done = [Held()], threading.Event()

    def watch() -> None:
        while True:
            seen[0] = seen[0] | held_by(proc.pid)
            if done.wait(0.02):
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        done.set()
        watcher.join()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    r.pid, r.held = proc.pid, seen[0]
    return r


def build_probe_target(dest: Path, *flags: str, name: str = "probe_target") -> str:
    """tests/host/NAME.c built with gcc into `dest` (the uprobe tests' targets)."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build the probe target (make setup-test installs it)")
    out = dest / name
    subprocess.run(["gcc", *flags, "-o", str(out), str(ROOT / "tests" / "host" / f"{name}.c")],
                   check=True)
    return str(out)


def settle(seconds: float = 0.3) -> None:
    """Let batched samples reach the reader (the tools drain every 100 ms). Not
    what a test's correctness rests on: a stop's final drain reads everything
    written before it (or counts it lost); this only spares that drain a backlog."""
    time.sleep(seconds)


RUN_DIR = Path("/run/bpfprobes")     # runtoken.py: a run's lock, TOKEN.lock, held open
_LOCK = re.compile(r"/run/bpfprobes/([0-9a-f]{16})\.(?:lock|new)")   # .new: before its rename


class Held(NamedTuple):
    """Ids of BPF programs and maps (ids are not reused while the kernel runs),
    and the run tokens that name a run's tracefs objects."""
    progs: frozenset = frozenset()
    maps: frozenset = frozenset()
    tokens: frozenset = frozenset()

    def __or__(self, other: "Held") -> "Held":
        return Held(self.progs | other.progs, self.maps | other.maps,
                    self.tokens | other.tokens)

    def __bool__(self) -> bool:
        return bool(self.progs or self.maps)


def held_by(pid: int) -> Held:
    """What process `pid` holds fds of: BPF programs and maps (fdinfo's prog_id:
    and map_id: lines) and its run lock (the token): a run's own objects,
    whatever else is loaded."""
    progs, maps, tokens = set(), set(), set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return Held()
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
            m = _LOCK.fullmatch(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue                        # closed meanwhile
        for key, value in re.findall(r"^(prog_id|map_id):\s*(\d+)$", text, re.M):
            (progs if key == "prog_id" else maps).add(int(value))
        if m:
            tokens.add(m.group(1))
    return Held(frozenset(progs), frozenset(maps), frozenset(tokens))


def _bpf_ids(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", kind, "show", "--json"], capture_output=True, text=True,
                         check=True)
    return {p["id"] for p in json.loads(out.stdout or "[]")}


def recursion_misses(progs: frozenset) -> int:
    """Runs of these programs the kernel skipped: a tracepoint or kprobe program
    does not run while another BPF program runs on that CPU (an interrupt that
    lands in one, with other tracers busy), and the kernel counts each skip."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True,
                         check=True)
    return sum(p.get("recursion_misses", 0) for p in json.loads(out.stdout or "[]")
               if p["id"] in progs)


def still_loaded(held: Held, timeout: float = 5.0) -> Held:
    """Which of `held` still exist, after up to `timeout` s for the kernel to free
    them (programs and maps go once their last reference, freed after an RCU
    grace period, is dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = Held(frozenset(held.progs & _bpf_ids("prog")) if held.progs else frozenset(),
                    frozenset(held.maps & _bpf_ids("map")) if held.maps else frozenset())
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _tokens_of(pid: int) -> set[str]:
    """Tokens of the run locks that process `pid` created (the lock's first
    record names its pid; the file stays while the run left something)."""
    tokens = set()
    for lock in RUN_DIR.glob("*.lock") if RUN_DIR.is_dir() else []:
        try:
            with open(lock) as f:
                first = json.loads(f.readline())
        except (OSError, ValueError):
            continue
        if isinstance(first, dict) and first.get("pid") == pid:
            tokens.add(lock.stem)
    return tokens


def tracefs_objects_of(pid: int, held: Held = Held()) -> list[str]:
    """kprobe/uprobe_events lines and trace instances of the run with this pid:
    named for its token (seen held, or in a lock file of that pid) or, as BCC
    names its events, `..._bcc_PID`."""
    tokens = sorted(held.tokens | _tokens_of(pid))
    names = [rf"_bcc_{pid}(?!\d)", rf"bpfprobes_{pid}(?!\d)",
             *[rf"bpfprobes_{t}(?![0-9a-f])" for t in tokens]]
    name = re.compile("|".join(names))
    found = [ln for ln in dynamic_events().splitlines() if name.search(ln)]
    instances = Path("/sys/kernel/tracing/instances")
    if instances.is_dir():
        found += [f"instances/{d.name}" for d in instances.iterdir()
                  if d.name in {f"bpfprobes-{x}" for x in [pid, *tokens]}]
    return found


def leftovers(pid: int, held: Held) -> list:
    """What a stopped run left in the kernel: its programs and maps still loaded
    (by id), its tracefs events and instance."""
    left = still_loaded(held)
    return [*sorted(left.progs), *sorted(left.maps), *tracefs_objects_of(pid, held)]


def loaded_bpf_programs() -> list[str]:
    """Names of every BPF program loaded in the kernel now (bpftool). By name:
    only where nothing else traces (the VM); on a host use held_by/still_loaded."""
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


def unprivileged_copy(dest: Path) -> Path:
    """The package (bpfprobes/ and bpf_c/ as in the checkout) and the distributions
    setup.cfg requires, copied from this environment into `dest`, readable by any
    user (dirs 0755, files 0644): an ordinary user cannot read a checkout or a
    .venv in a 0700 directory, and must still get the tool's own error."""
    def copy(src: Path, rel: str) -> None:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)

    for top in ("bpfprobes", "bpf_c"):
        for src in (ROOT / top).rglob("*"):
            if src.is_file() and "__pycache__" not in src.parts:
                copy(src, str(src.relative_to(ROOT)))
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    for req in cfg["options"]["install_requires"].split():
        dist = importlib.metadata.distribution(re.split(r"[<>=!~;\[ ]", req)[0])
        for f in dist.files or []:
            if not str(f).startswith("..") and "__pycache__" not in f.parts:
                copy(Path(f.locate()), str(f))
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


# The interpreter a venv was made from (/usr/bin/python3: BCC in its dist-packages),
# which any user can run, unlike a venv's inside a private checkout
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


class StackTarget:
    """tests/host/stack_target.c running: a() -> b() -> c() n times, a() -> c() m
    times once told to go; it exits only when `release()` closes its stdin."""

    def __init__(self, binary: str, n: int, m: int) -> None:
        self.proc = subprocess.Popen([binary, str(n), str(m)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def release(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Workload:
    """tests/workload.py in a child: its pid is known before it opens anything."""

    def __init__(self, comm: str, *ops: str, nice: int = 0) -> None:
        self.comm = comm
        # nice: a storm that must not starve the tool whose response time is measured
        self.proc = subprocess.Popen(["nice", "-n", str(nice), PYTHON,
                                      str(ROOT / "tests" / "workload.py"), comm, "--wait", *ops],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = int(self.proc.stdout.readline())

    def go(self) -> list[int]:
        out, _ = self.proc.communicate("go\n", timeout=120)
        return [int(x) for x in out.split()]


# A function's first three argument registers as kprobe_events spells them, written
# here from the ABI documents, not taken from bpfprobes' own tables: a wrong table
# entry must fail a test that uses these.
ARG_REGISTERS = {"x86_64": ("%di", "%si", "%dx"), "aarch64": ("%x0", "%x1", "%x2")}
ARGS = ARG_REGISTERS[os.uname().machine] if os.uname().machine in ARG_REGISTERS else ()
# the arch's C function that calls every syscall's entry symbol (a kernel stack has it)
SYSCALL_ENTRY_FRAME = {"x86_64": "do_syscall_64", "aarch64": "invoke_syscall"}.get(
    os.uname().machine, "")

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

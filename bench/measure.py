"""One measured run: a tracer (or none) and the open storm, and what it cost.

Live time: from launch, the bench opens a fresh marker path every 2 ms (each
one numbered, its time noted) until the tracer's output names one; live is
the time of the earliest marker the output holds. Tracers that buffer their
output (a file is not a tty) are still timed right: the markers keep coming
until the buffer is written out, and the earliest one seen says when tracing
began, not when the buffer happened to be flushed.

After the storm, the bench waits until the output stops growing (the tracer
has caught up), then reads the tracer's peak RSS (VmHWM) and CPU time from
/proc, stops it with SIGINT, and counts the workload's path in its output.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tracers import Tracer

TICK = os.sysconf("SC_CLK_TCK")
MARKER_EVERY = 0.002      # s between marker opens while waiting for live
SETTLE = 1.0              # s the output must stay unchanged to count as caught up
CATCH_UP_MAX = 120.0      # s to wait for a tracer to catch up after the storm
STOP_TIMEOUT = 15.0       # s between the first SIGINT and SIGKILL
STOP_TRIES = 3            # SIGINTs sent in that time


@dataclass
class Run:
    tracer: str
    n: int
    ns_per_op: float | None = None
    captured: int | None = None       # workload events in the tracer's output
    lost: int | None = None           # as the tracer reported it (None: no report)
    live_s: float | None = None
    rss_mb: float | None = None
    buffers_mb: float | None = None   # of rss_mb: the event buffers' mapped pages
    tree_rss_mb: float | None = None  # the largest peak of the tracer or a child (TreePeak)
    getppid_ns: float | None = None   # a getppid() with the tracer attached (collateral)
    cpu_s: float | None = None        # tracer CPU from live to caught-up
    events_total: int | None = None   # every event it output (other processes too)
    error: str | None = None          # the run failed: left out of the medians
    note: str | None = None           # it had to be killed: no loss report at exit


@dataclass(frozen=True)
class Context:
    workload: str                     # the built workload binary
    python: str
    root: str
    work: Path                        # scratch directory for paths and outputs
    pin: int | None = None            # CPU to pin the workload to
    live_timeout: float = 60.0
    marker_every: float = MARKER_EVERY


def clean_env() -> dict[str, str]:
    """Every tracer gets the same environment. PYTHONUNBUFFERED (set on this
    machine) would make Python peers write once per line, so it goes; BCC
    peers get the kernel headers bpfprobes found (none match this kernel)."""
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if "BCC_KERNEL_SOURCE" not in env:
        env.update(_headers_env())
    return env


@functools.cache
def _headers_env() -> dict[str, str]:
    """The variables bpfprobes sets for BCC (those it unsets: left as they are)."""
    from bpfprobes.kernel import headers
    return {k: v for k, v in headers.find().bcc_env().items() if v is not None}


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK    # utime + stime


def _hwm_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


# mappings that are a tracer's event buffers (a BPF ring buffer map, perf rings)
BUFFER_MAPPINGS = ("anon_inode:bpf-map", "anon_inode:[perf_event]", "[perf_event]")


def _buffers_mb(pid: int) -> float | None:
    """Resident pages of the event buffers the tracer has mapped (/proc/PID/smaps)."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    kb, inside = 0, False
    for line in text.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5].strip() in BUFFER_MAPPINGS
        elif inside and line.startswith("Rss:"):
            kb += int(line.split()[1])
    return kb / 1024


# The storms: the workload's arguments for N operations on a unique token (open:
# the path it opens; exec: an argument of the program it executes), and a marker
# op the tracers see the same way (an open of, or an exec naming, a fresh path).
STORMS = {
    "open": lambda exe, n, token: [exe, str(n), token],
    "exec": lambda exe, n, token: [exe, "exec", str(n), token],
    "call": lambda exe, n, token: [exe, "call", str(n), token],
    "getppid": lambda exe, n, token: [exe, "getppid", str(n)],
}
# what a captured event's output line holds: the token, as the storm's program
# was given it (exec: not the storm's own start, which names it too)
NEEDLES = {"open": "{}", "exec": "exit {}", "call": "{}"}


def storm(ctx: Context, n: int, token: str | None, kind: str = "open") -> float:
    """Run the workload; ns per operation (token None: per getppid())."""
    argv = STORMS[kind if token is not None else "getppid"](ctx.workload, n, token)
    if ctx.pin is not None:
        argv = ["taskset", "-c", str(ctx.pin), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / n


def untraced(ctx: Context, n: int, kind: str = "open") -> Run:
    path = _target(ctx)
    try:
        return Run("untraced", n, ns_per_op=storm(ctx, n, path, kind), captured=None,
                   getppid_ns=storm(ctx, n, None))
    finally:
        os.unlink(path)


def _target(ctx: Context) -> str:
    """A path no other process opens: the workload's file (it exists: open succeeds)."""
    path = ctx.work / f"w-{uuid.uuid4().hex[:10]}"
    path.touch()
    return str(path)


class _Markers:
    """Numbered marker ops (opens, or execs naming the path), and the search for
    them in the tracer's output."""

    def __init__(self, ctx: Context, kind: str) -> None:
        self.prefix = str(ctx.work / f"m-{uuid.uuid4().hex[:8]}-")
        self.times: list[float] = []
        self._rx = re.compile(re.escape(self.prefix) + r"(\d+)")
        self._exe, self._kind = ctx.workload, kind

    def open_next(self) -> None:
        path = f"{self.prefix}{len(self.times)}"
        self.times.append(time.monotonic())
        if self._kind in ("exec", "call"):     # a process that execs, or calls once
            argv = [self._exe, "exit", path] if self._kind == "exec" else \
                [self._exe, "call", "1", path]
            quiet = [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]   # its ns figure
            os.waitpid(os.posix_spawn(self._exe, argv, os.environ, file_actions=quiet), 0)
            return
        try:
            os.close(os.open(path, os.O_RDONLY))
        except FileNotFoundError:
            pass                          # a failed open is traced all the same

    def first_seen(self, text: str) -> float | None:
        seen = [int(m) for m in self._rx.findall(text)]
        return self.times[min(seen)] if seen else None


class _Tail:
    """The text a growing file gained since the last call (whole lines only):
    the live check must not re-read megabytes of output every 20 ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0

    def new_text(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        return data[:cut].decode(errors="replace")


def _wait_live(proc: subprocess.Popen, tracer: Tracer, out: Path, ctx: Context,
               t0: float, peak: TreePeak) -> float:
    markers = _Markers(ctx, tracer.storm)
    tail = _Tail(out)
    deadline = t0 + ctx.live_timeout
    last_read = 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before going live")
        if tracer.live_by == "begin":
            peak.sample()
            if re.search(r"^live$", tail.new_text(), re.M):
                return time.monotonic() - t0
            time.sleep(0.005)
            continue
        markers.open_next()
        now = time.monotonic()
        if now - last_read > 0.02:
            last_read = now
            peak.sample()
            seen = markers.first_seen(tail.new_text())
            if seen is not None:
                return seen - t0
        time.sleep(ctx.marker_every)
    raise RuntimeError(f"not live after {ctx.live_timeout:.0f} s")


def _wait_caught_up(out: Path) -> None:
    """Until the output file has not grown for SETTLE seconds."""
    size, since, start = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - start < CATCH_UP_MAX:
        now_size = out.stat().st_size
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= SETTLE:
            return
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> str | None:
    """SIGINT, as a user's Ctrl-C; again if it was swallowed (a Python tracer
    interrupted inside a ctypes callback only prints the KeyboardInterrupt)."""
    for _ in range(STOP_TRIES):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT / STOP_TRIES)
            return None
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()
    return f"did not stop within {STOP_TIMEOUT:.0f} s of SIGINT (killed)"


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, as /proc lists them now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


class TreePeak:
    """The largest peak RSS (VmHWM) of a tracer or any process it started (BCC's
    compile child), sampled while it starts and once it has caught up: a child's
    VmHWM only grows, so a sample shortly before it exits holds its peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mb: float | None = None

    def sample(self) -> None:
        for p in _tree(self.pid):
            mb = _hwm_mb(p)
            if mb is not None and (self.mb is None or mb > self.mb):
                self.mb = mb


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _default_sigint() -> None:
    """A tracer starts with SIGINT's default action, as from a shell: a bench run
    in the background (nohup, CI) has it ignored, and a Python tracer that relies
    on KeyboardInterrupt would never stop. And it gets SIGTERM if the bench dies
    without stopping it (killed outright): no tracer outlives its bench to
    weigh on the next measurement."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _launch(tracer: Tracer, ctx: Context) -> tuple[subprocess.Popen, Path, Path, float]:
    """Start `tracer` as a user would, its output to files: (process, stdout, stderr, start)."""
    out, err = ctx.work / "tracer.out", ctx.work / "tracer.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        t0 = time.monotonic()
        proc = subprocess.Popen(tracer.command(ctx.python, ctx.root), stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL, cwd=ctx.root,
                                env={**clean_env(), **tracer.environment(str(ctx.work))},
                                preexec_fn=_default_sigint)
    return proc, out, err, t0


def traced(tracer: Tracer, ctx: Context, n: int) -> Run:
    run = Run(tracer.name, n)
    target = _target(ctx)
    proc, out, err, t0 = _launch(tracer, ctx)
    peak = TreePeak(proc.pid)
    try:
        run.live_s = _wait_live(proc, tracer, out, ctx, t0, peak)
        cpu_live = _cpu_seconds(proc.pid)
        run.ns_per_op = storm(ctx, n, target, tracer.storm)
        _wait_caught_up(out)
        run.rss_mb = _hwm_mb(proc.pid)
        run.buffers_mb = _buffers_mb(proc.pid)
        peak.sample()
        cpu_end = _cpu_seconds(proc.pid)
        if cpu_live is not None and cpu_end is not None:
            run.cpu_s = cpu_end - cpu_live
        run.getppid_ns = storm(ctx, n, None)      # after the count: no event of its own
    except (RuntimeError, subprocess.CalledProcessError) as e:
        run.error = str(e)
    finally:
        run.tree_rss_mb = peak.mb
        run.note = _stop(proc)        # its figures stand; only its own loss report is missing
    _count(run, tracer, out, err, target)
    for p in (out, err, Path(target)):
        p.unlink(missing_ok=True)
    return run


@dataclass
class Step:
    rate: int                         # opens a second asked of the workload
    achieved: float                   # opens a second it made
    n: int
    captured: int


def sustained(tracer: Tracer, ctx: Context, rates: tuple[int, ...], seconds: float) -> list[Step]:
    """One run of `tracer` under paced open storms of rising rate, `seconds` each,
    until one is not captured whole: the rate it keeps up with, nothing lost."""
    steps: list[Step] = []
    proc, out, err, t0 = _launch(tracer, ctx)
    try:
        _wait_live(proc, tracer, out, ctx, t0, TreePeak(proc.pid))
        tail = _Tail(out)
        tail.new_text()
        for rate in rates:
            target, n = _target(ctx), int(rate * seconds)
            argv = [ctx.workload, "paced", str(n), str(rate), target]
            ns = int(subprocess.run(argv, capture_output=True, text=True,
                                    check=True).stdout.split()[-1])
            _wait_caught_up(out)
            steps.append(Step(rate, n / ns * 1e9, n, tail.new_text().count(target)))
            os.unlink(target)
            if steps[-1].captured < n:
                break
    finally:
        _stop(proc)
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
    return steps


def _count(run: Run, tracer: Tracer, out: Path, err: Path, target: str) -> None:
    data = out.read_bytes()
    text_err = err.read_text(errors="replace")
    if tracer.events == "count":
        m = re.search(rb"^@\w+: (\d+)", data, re.M)
        run.events_total = int(m.group(1)) if m else None
        run.captured = run.events_total      # every one on the machine: >= the storm
    else:
        run.captured = data.count(NEEDLES[tracer.storm].format(target).encode())
        run.events_total = data.count(b"\n")
    run.lost = tracer.lost(data.decode(errors="replace") + "\n" + text_err)
    if run.lost == 0 and (run.error or run.note):
        run.lost = None       # killed: its report at exit never came
    if run.error:
        run.error += f"; stderr: {text_err.strip()[-300:]}"

"""Teardown on every signal, in every phase (issue 11, section 5).

Each tool is started, as a terminal starts it, in a process group of its own,
and sent SIGINT, SIGTERM, SIGHUP or SIGQUIT, to the process or to the whole
group (as Ctrl-C is), after a delay drawn with a fixed seed over the tool's
measured set-up, so that deliveries land while it reaps, finds headers,
compiles (in the program cache's child on a cold start), loads, attaches,
runs and drains; a few runs get a closed stdout instead. Every delivery is
judged on its own, whatever phase it hit:

- the tool exits within PROMPT_S of the signal (a lost signal would run on to
  the -d safety net and fail as a hang);
- it says how it ended: a summary with `reason: signal:SIG` (status 0) if the
  run had begun, else `TOOL: stopped by SIG during set-up (PHASE)` (status
  128+N); nothing else (no traceback, no other status);
- nothing of that run remains: the BPF programs and maps it was seen holding
  (its fds and its children's, read from /proc/PID/fdinfo every few ms while
  it ran: by id, never by name, since other tracers run at the same time),
  its dynamic events (BCC's `_bcc_PID`, the tracefs backend's group, any line
  on the run's own copy of the probed binary), its trace instance, and any
  process of its session (the compile child).

The signal is sent only once the tool's own handler is installed (SigCgt
shows SIGQUIT caught: Python itself catches only SIGINT). Before that the
interpreter is starting and importing, no kernel object exists, and the
default actions apply.
"""
from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bpfprobes.backends.bpf import progcache
from bpfprobes.backends.tracefs import dynevents, runtoken
from bpfprobes.kernel import interrupts
from tooling import PYTHON, ROOT, dynamic_events, held_by

HERE = Path(__file__).parent
TRACEFS = Path("/sys/kernel/tracing")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
ROUNDS = 6              # x 4 signals x (process, group) = 48 deliveries per tool
COLD_PER_TOOL = 4       # of those, with an empty program cache (tools that use it)
PIPE_RUNS = 2           # + a closed stdout: 50 per tool
PROMPT_S = 8.0          # from the signal to exit; an in-process BCC compile (~1-2 s
                        # here, more under load) runs to its end before the stop
SAFETY_D = "40"         # -d: a lost signal ends as a timeout failure, never a hang
SEED = 11
POLL_S = 0.005
# the signals at their defaults, as a terminal starts a command (the test runner
# itself may have been started with some ignored, which the tool would honour)
AS_FROM_A_TERMINAL = ["env", "--default-signal=INT,QUIT,TERM,HUP"]


def _busiest_irq() -> int:
    lines = interrupts.read_lines()
    return max(lines, key=lambda n: sum(lines[n].counts))


@dataclass
class ToolCase:
    name: str
    argv: list[str]                 # after `bpfprobes`, without -d
    cacheable: bool = False         # goes through the program cache (cold runs exist)
    binary: bool = False            # probes its own copy of probe_target (per run)
    pipe_argv: list[str] = field(default_factory=list)   # extra for the closed-pipe runs


def tool_cases(target: str) -> list[ToolCase]:
    irq = str(_busiest_irq())
    return [
        ToolCase("opensnoop", ["opensnoop", "--json"], cacheable=True),
        ToolCase("execsnoop", ["execsnoop", "--json"], cacheable=True),
        ToolCase("count", ["count", "--json", "t:syscalls:sys_enter_getppid"],
                 pipe_argv=["-i", "0.3"]),
        ToolCase("probe-bpf", ["probe", "--json", "--backend", "bpf", f"p:{target}:echo"]),
        ToolCase("probe-tracefs", ["probe", "--json", "--backend", "tracefs",
                                   "p:{binary}:echo"], binary=True),
        ToolCase("irq", ["irq", "--json", "--irq", irq], cacheable=True,
                 pipe_argv=["-i", "0.3"]),
    ]


# ------------------------------------------------------------------ what a run holds

def _children(pid: int) -> set[int]:
    out = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def _lock_tokens(pid: int, since: float) -> set[str]:
    """Tokens of run lock files that process `pid` made since `since` (the run's
    own, even if it lived too briefly for Watch to see its fd)."""
    out = set()
    for token, _ in runtoken.runs_of(pid):
        try:
            first = (runtoken.RUN_DIR / f"{token}{runtoken.LOCK_SUFFIX}").read_text()
            started = json.loads(first.splitlines()[0]).get("started", 0)
        except (OSError, ValueError, IndexError):
            continue
        if started >= since - 1:
            out.add(token)
    return out


def _instances() -> set[str]:
    try:
        return set(os.listdir(TRACEFS / "instances"))
    except OSError:
        return set()


def _names_run(instance: str, pid: int, tokens: set[str]) -> bool:
    """Whether a trace instance is named for this run: its token, or (before
    tokens) its pid."""
    return instance == f"bpfprobes-{pid}" or any(instance == f"bpfprobes-{t}" for t in tokens)


class Watch(threading.Thread):
    """Samples, while the run lives, its BPF objects (its own fds and its
    children's), its children, and trace instances named for it."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.bpf: set[tuple[str, int]] = set()
        self.children: set[int] = set()
        self.instances: set[str] = set()
        self.tokens: set[str] = set()       # its run token (the lock file it holds)
        # what is there before the run can have made anything (it is still starting
        # Python): an older run that had the same pid left it, not this one
        self.before = set(dynamic_events().splitlines()) | _instances()
        self.since = time.time()
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            kids = _children(self.pid)
            self.children |= kids
            for p in (self.pid, *kids):
                held = held_by(p)
                self.bpf |= {("prog", i) for i in held.progs} | {("map", i) for i in held.maps}
                if p == self.pid:
                    self.tokens |= held.tokens
            self.instances |= {d for d in _instances() if _names_run(d, self.pid, self.tokens)}
            self.done.wait(POLL_S * 2)

    def stop(self) -> None:
        self.done.set()
        self.join()


def exited(proc: subprocess.Popen, timeout: float) -> int | None:
    """Wait up to `timeout` s for the run to end, without reaping it: its zombie
    keeps its pid from being reused (pid_max may be 32768, and other tests fork
    fast) while what is named for that pid is checked. Its status as Popen says
    it (negative: killed by that signal), or None if it still runs. Reap it
    with proc.wait() after the checks."""
    deadline = time.monotonic() + timeout
    while True:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == proc.pid:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)


def _first_line(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The tool's first line of output ("" if none comes in time: no hang)."""
    return proc.stdout.readline() if select.select([proc.stdout], [], [], timeout)[0] else ""


def _killed(proc: subprocess.Popen, o, problem: str) -> int | None:
    """A run that did not stop when it should have: said, its group killed, its status."""
    o.problems.append(problem)
    os.killpg(proc.pid, signal.SIGKILL)
    return exited(proc, 10)


def _reap(proc: subprocess.Popen) -> None:
    """Reap the run, ending its whole group first if a failed check left it running
    (a test must not wait forever on what it is testing)."""
    if exited(proc, 0) is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _handler_installed(pid: int) -> bool | None:
    """True once SIGQUIT is caught (the tool's handler); None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGQUIT - 1) & 1)
    except OSError:
        return None
    return False


def _session_members(sid: int) -> list[str]:
    """Live (not zombie) processes of session `sid`: the run's survivors."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(f"{d} {stat[:stat.rindex(')') + 1]}")
    return out


def _existing(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", kind, "show", "--json"], capture_output=True, text=True,
                         check=True)
    return {o["id"] for o in json.loads(out.stdout or "[]")}


def leftovers(pid: int, watch: Watch, meta: dict | None, binary: str | None) -> list[str]:
    """What of run `pid` is still there, after a grace period for the kernel to free
    programs (an RCU grace period) and for a dying child to be reaped."""
    deadline = time.monotonic() + 5.0
    while True:
        left = []
        progs, maps = _existing("prog"), _existing("map")
        left += [f"{k} id {i}" for k, i in sorted(watch.bpf)
                 if i in (progs if k == "prog" else maps)]
        mine = watch.tokens | _lock_tokens(pid, watch.since)
        for line in dynamic_events().splitlines():
            if line in watch.before:
                continue
            if re.search(rf"_bcc_{pid}(?!\w)|bpfprobes_{pid}/", line) \
                    or any(f"bpfprobes_{t}/" in line for t in mine) \
                    or (binary and binary in line):
                left.append(f"event {line}")
        # what the run recorded in its lock file and did not remove (by its token;
        # a lock file of an older run with the same pid is not this run's)
        left += [f"recorded {x}" for x in dynevents.objects_of(TRACEFS, pid)
                 if any(t in x for t in mine) and x not in watch.before]
        named = {Path(meta["instance"]).name} if meta and meta.get("instance") else set()
        left += [f"instance {d}" for d in
                 sorted(((watch.instances - watch.before) | named) & _instances())]
        left += [f"instance {d}" for d in sorted(_instances() - watch.before)
                 if _names_run(d, pid, mine) and d not in watch.instances | named]
        left += [f"process {m}" for m in _session_members(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ------------------------------------------------------------------ one delivery

@dataclass
class Outcome:
    tool: str
    what: str                       # "SIGINT to process, 0.123 s, warm" ...
    phase: str = ""                 # "run", "set-up (compiling)", "output-closed"
    problems: list[str] = field(default_factory=list)
    exit_s: float = 0.0             # signal to exit


def _summary(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith('{"type":"summary"'):
            return json.loads(line)
    return None


def _meta(stdout: str) -> dict | None:
    for line in stdout.splitlines():
        if line.startswith('{"type":"meta"'):
            return json.loads(line)
    return None


class Runner:
    """Starts a tool as a terminal would (its own session and process group)."""

    def __init__(self, case: ToolCase, work: Path, target_src: Path) -> None:
        self.case, self.work, self.target_src = case, work, target_src
        # a program cache of this tool's own: a cold start is this cache with its
        # programs removed (its headers tree, built once, stays: a first merge of
        # the distro headers takes seconds more here and is not what is tested)
        self.cache = work / f"cache-{case.name}" if case.cacheable else None

    def _argv(self, extra: list[str]) -> tuple[list[str], str | None]:
        binary = None
        argv = list(self.case.argv)
        if self.case.binary:
            binary = str(self.work / f"target-{os.urandom(6).hex()}")
            shutil.copy(self.target_src, binary)     # a new inode: no other run's probes
            argv = [a.replace("{binary}", binary) for a in argv]
        return [*AS_FROM_A_TERMINAL, PYTHON, "-m", "bpfprobes.cli.main", *argv, "-d", SAFETY_D,
                *extra], binary

    def _start(self, cold: bool, extra: list[str] = (), stdout=None):
        argv, binary = self._argv(list(extra))
        env = dict(os.environ)
        if self.cache is not None:
            env["BPFPROBES_CACHE"] = str(self.cache)
            if cold:
                shutil.rmtree(self.cache / progcache.DIR.name, ignore_errors=True)
        out = tempfile.TemporaryFile(dir=self.work)
        err = tempfile.TemporaryFile(dir=self.work)
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=stdout or out, stderr=err,
                                text=True, errors="replace", start_new_session=True)
        return proc, out, err, binary

    def _await_handler(self, proc) -> bool:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = _handler_installed(proc.pid)
            if state:
                return True
            if state is None or exited(proc, 0) is not None:
                return False
            time.sleep(POLL_S / 2)
        return False

    def setup_time(self, cold: bool) -> float:
        """From the handler's installation to the meta line: the window to hit."""
        proc, out, err, binary = self._start(cold, stdout=subprocess.PIPE)
        try:
            assert self._await_handler(proc), f"{self.case.name} did not start"
            began = time.monotonic()
            line = _first_line(proc)
            took = time.monotonic() - began
            assert line.startswith('{"type":"meta"'), (line, self._read(err))
            return took
        finally:
            # unread output must not block it (a full pipe); not SIGKILL: that would
            # leave tracefs objects for the next start to reap
            proc.stdout.close()
            if exited(proc, 0) is None:
                os.killpg(proc.pid, signal.SIGINT)
                exited(proc, PROMPT_S)
            _reap(proc)
            if binary:
                os.unlink(binary)

    @staticmethod
    def _read(f) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")     # other tests' names: any bytes

    def deliver(self, sig: int, group: bool, delay: float, cold: bool) -> Outcome:
        name = signal.Signals(sig).name
        o = Outcome(self.case.name, f"{name} to {'group' if group else 'process'} {delay:.3f} s "
                                    f"after the handler, {'cold' if cold else 'warm'}")
        proc, out, err, binary = self._start(cold)
        watch = Watch(proc.pid)
        try:
            if not self._await_handler(proc):
                os.killpg(proc.pid, signal.SIGKILL)
                exited(proc, 10)
                o.problems.append(f"no handler installed: {self._read(err)!r}")
                return o
            time.sleep(delay)
            sent = time.monotonic()
            (os.killpg if group else os.kill)(proc.pid, sig)
            rc = exited(proc, PROMPT_S)
            if rc is None:
                rc = _killed(proc, o, f"still running {PROMPT_S} s after {name}")
            o.exit_s = time.monotonic() - sent
            watch.stop()
            stdout, stderr = self._read(out), self._read(err)
            summary, meta = _summary(stdout), _meta(stdout)
            said = re.search(rf": stopped by {name} during set-up \(([^)]+)\)", stderr)
            if rc == 0 and summary and summary["reason"] == f"signal:{name}" and meta:
                o.phase = "run"
            elif rc == 128 + sig and said and not summary:
                o.phase = f"set-up ({said.group(1)})"
            else:
                o.problems.append(f"ended with status {rc}, summary {summary}, "
                                  f"stderr {stderr!r}")
            self._common_checks(o, proc.pid, watch, meta, stderr, binary)
            return o
        finally:
            watch.stop()
            _reap(proc)                     # reaped only now: see exited()

    def closed_pipe(self, trigger) -> Outcome:
        """stdout a pipe whose reader goes away after the first line (| head -1)."""
        o = Outcome(self.case.name, "stdout closed after the first line", phase="output-closed")
        proc, out, err, binary = self._start(False, self.case.pipe_argv,
                                             stdout=subprocess.PIPE)
        watch = Watch(proc.pid)
        try:
            first = _first_line(proc)
            meta = json.loads(first) if first.startswith('{"type":"meta"') else None
            proc.stdout.close()
            closed = time.monotonic()
            while (rc := exited(proc, 0)) is None and time.monotonic() - closed < PROMPT_S:
                trigger(binary)             # something to write, into the closed pipe
                time.sleep(0.1)
            if rc is None:
                rc = _killed(proc, o, f"still running {PROMPT_S} s after its stdout closed")
            o.exit_s = time.monotonic() - closed
            watch.stop()
            stderr = self._read(err)
            if meta is None:
                o.problems.append(f"no meta line first: {first!r} {stderr!r}")
            if rc != 0:
                o.problems.append(f"ended with status {rc}: {stderr!r}")
            self._common_checks(o, proc.pid, watch, meta, stderr, binary)
            return o
        finally:
            watch.stop()
            _reap(proc)

    def _common_checks(self, o: Outcome, pid: int, watch: Watch, meta: dict | None,
                       stderr: str, binary: str | None) -> None:
        for bad in ("Traceback", "Exception ignored"):
            if bad in stderr:
                o.problems.append(f"{bad} on stderr: {stderr!r}")
        if meta and meta.get("instance") and \
                not _names_run(Path(meta["instance"]).name, pid, watch.tokens):
            # the run's token, read from the lock it holds, must name what the run
            # says is its instance, or a leak before "live" would go unnoticed
            o.problems.append(f"instance {meta['instance']} not named by the run's token "
                              f"{sorted(watch.tokens)}")
        o.problems += [f"left behind: {x}" for x in leftovers(pid, watch, meta, binary)]
        if binary:
            os.unlink(binary)


# ------------------------------------------------------------------ the campaign

def _plan(case: ToolCase, rng: random.Random, warm_s: float, cold_s: float | None):
    """(signal, to group?, delay, cold) for each delivery: every signal to the
    process and to the group ROUNDS times, delays over the whole set-up and
    past it (about a quarter land once the run has begun), some with an empty
    cache."""
    combos = [(s, g) for _ in range(ROUNDS) for s in SIGNALS for g in (False, True)]
    colds = set(rng.sample(range(len(combos)), COLD_PER_TOOL)) \
        if case.cacheable and cold_s is not None else set()
    out = []
    for i, (s, g) in enumerate(combos):
        span = cold_s if i in colds else warm_s
        out.append((s, g, rng.uniform(0, 1.4 * span), i in colds))
    return out


def _trigger_for(case: ToolCase, work: Path):
    def opens(_binary):
        with open(work / "pipe-trigger", "w"):
            pass

    def execs(_binary):
        subprocess.run(["/bin/true"])

    def calls(binary):
        subprocess.run([binary, "pipe", "1", "0", "/nonexistent"], input="go\n", text=True,
                       stdout=subprocess.DEVNULL)

    return {"opensnoop": opens, "execsnoop": execs, "probe-bpf": calls,
            "probe-tracefs": calls}.get(case.name, lambda _b: None)   # count, irq: -i


def campaign(case: ToolCase, work: Path, target: str, seed: int) -> list[Outcome]:
    runner = Runner(case, work, Path(target))
    runner.setup_time(cold=False)            # fills the caches (headers tree, program)
    warm = sorted(runner.setup_time(cold=False) for _ in range(3))[1]     # the median
    cold = runner.setup_time(cold=True) if case.cacheable else None
    rng = random.Random(f"{seed}:{case.name}")
    outcomes = [runner.deliver(*d) for d in _plan(case, rng, warm, cold)]
    trigger = _trigger_for(case, work)
    if case.name == "probe-bpf":
        trigger = (lambda f: lambda _b: f(target))(trigger)
    outcomes += [runner.closed_pipe(trigger) for _ in range(PIPE_RUNS)]
    return outcomes


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, list[Outcome]]:
    work = tmp_path_factory.mktemp("signals")
    target = str(work / "probe_target")
    subprocess.run(["gcc", "-O0", "-o", target, str(HERE / "probe_target.c")], check=True)
    cases = tool_cases(target)
    # tools in parallel (each one's deliveries in turn): the file stays within minutes
    try:
        with ThreadPoolExecutor(len(cases)) as pool:
            futures = {c.name: pool.submit(campaign, c, work, target, SEED) for c in cases}
            return {name: f.result() for name, f in futures.items()}
    finally:
        for cache in work.glob("cache-*"):
            shutil.rmtree(cache, ignore_errors=True)      # headers trees: 60 MB each


TOOLS = ["opensnoop", "execsnoop", "count", "probe-bpf", "probe-tracefs", "irq"]


@pytest.mark.parametrize("tool", TOOLS)
def test_every_signal_in_every_phase_leaves_nothing(outcomes, tool):
    got = outcomes[tool]
    phases: dict[str, int] = {}
    for o in got:
        phases[o.phase or "?"] = phases.get(o.phase or "?", 0) + 1
    slowest = max(o.exit_s for o in got)
    print(f"\n{tool}: {len(got)} deliveries, phases {phases}, slowest exit {slowest:.2f} s")
    failed = [f"{o.what}: {'; '.join(o.problems)}" for o in got if o.problems]
    assert not failed, f"{len(failed)} of {len(got)} failed:\n" + "\n".join(failed)
    assert len(got) == len(SIGNALS) * 2 * ROUNDS + PIPE_RUNS


def test_ctrl_c_to_the_group_while_the_child_compiles(tmp_path):
    """The reported case: Ctrl-C (to the whole group) while a first start's
    compile child runs. The child must not die of it and leave the parent to
    compile again in process and attach: the parent kills it and stops there."""
    cache = tmp_path / "cold"
    out, err = (tempfile.TemporaryFile(dir=tmp_path) for _ in range(2))
    proc = subprocess.Popen([*AS_FROM_A_TERMINAL, PYTHON, "-m", "bpfprobes.cli.main",
                             "opensnoop", "--json", "-d", SAFETY_D], cwd=ROOT, stdout=out,
                            stderr=err, start_new_session=True,
                            env={**os.environ, "BPFPROBES_CACHE": str(cache)})
    watch = Watch(proc.pid)
    own = Path(f"/proc/{proc.pid}/cmdline")

    def compile_child() -> list[int]:
        # a fork of the tool (same command line) that has BCC loaded: compiling. Not
        # a helper it runs (modprobe), which until its exec looks the same
        try:
            return [c for c in watch.children
                    if Path(f"/proc/{c}/cmdline").read_bytes() == own.read_bytes()
                    and "libbcc" in Path(f"/proc/{c}/maps").read_text()]
        except OSError:
            return []

    def stopped(pid: int) -> bool:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "T"

    try:
        deadline = time.monotonic() + 60
        while not compile_child() and exited(proc, 0) is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        child = compile_child()
        assert child, f"no compile child was seen: {Runner._read(err)}"
        # held where it is (SIGSTOP cannot be ignored): the signal lands while it compiles
        os.kill(child[0], signal.SIGSTOP)
        while not stopped(child[0]) and time.monotonic() < deadline:
            time.sleep(POLL_S)                  # SIGSTOP is delivered asynchronously
        assert stopped(child[0])
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        rc = exited(proc, PROMPT_S)
        took = time.monotonic() - sent
        if rc is None:
            os.killpg(proc.pid, signal.SIGKILL)
            exited(proc, 10)
        watch.stop()
        stdout, stderr = Runner._read(out), Runner._read(err)
        assert took < 3.0, "the compile child's end was waited for"
        # stopped in the wait for the child: not compiled again in process, not attached
        assert rc == 130 and stdout == "", (rc, stdout, stderr)
        assert stderr.strip().endswith(
            "stopped by SIGINT during set-up (compiling in a child process)"), stderr
        assert leftovers(proc.pid, watch, None, None) == []     # the child among them
    finally:
        watch.stop()
        _reap(proc)


def _mask(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1], 16) for ln in f if ln.startswith(field_name + ":"))


def test_nohup_is_honoured():
    """A signal ignored by whoever started the tool (nohup: SIGHUP) stays ignored;
    the others still stop it. Judged by order, not by waiting: SIGHUP is sent
    before SIGTERM, so a handled SIGHUP would be the recorded reason."""
    proc = subprocess.Popen(["env", "--ignore-signal=HUP", "--default-signal=INT,QUIT,TERM",
                             PYTHON, "-m", "bpfprobes.cli.main", "opensnoop", "--json", "-p", "1",
                             "-d", SAFETY_D], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().startswith('{"type":"meta"')
        hup = 1 << (signal.SIGHUP - 1)
        assert _mask(proc.pid, "SigIgn") & hup and not _mask(proc.pid, "SigCgt") & hup
        os.kill(proc.pid, signal.SIGHUP)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=PROMPT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert _summary(out)["reason"] == "signal:SIGTERM"


@pytest.mark.parametrize("tool", ["probe-tracefs", "opensnoop"])
def test_signals_during_teardown_do_not_cut_it(tmp_path, tool):
    """Ctrl-C pressed again and again: signals keep coming every few ms until the
    tool has exited, so its teardown surely receives some. One of them is the
    reason (the first the tool ran its handler for: the kernel hands pending
    signals over lowest number first); the rest change nothing; nothing is left."""
    target = str(tmp_path / "probe_target")
    subprocess.run(["gcc", "-O0", "-o", target, str(HERE / "probe_target.c")], check=True)
    case = next(c for c in tool_cases(target) if c.name == tool)
    runner = Runner(case, tmp_path, Path(target))
    proc, out, err, binary = runner._start(False)
    watch = Watch(proc.pid)
    try:
        assert runner._await_handler(proc)
        deadline = time.monotonic() + 30
        while not _meta(Runner._read(out)) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        sent = 0
        while exited(proc, 0) is None and time.monotonic() < deadline:
            os.killpg(proc.pid, SIGNALS[sent % len(SIGNALS)])
            sent += 1
            time.sleep(0.002)
        rc = exited(proc, 0)
        watch.stop()
        stdout, stderr = Runner._read(out), Runner._read(err)
        assert sent > 1 and rc == 0, (sent, rc, stderr)
        assert _summary(stdout)["reason"] in {f"signal:{signal.Signals(x).name}" for x in SIGNALS}
        assert "Traceback" not in stderr
        o = Outcome(tool, "repeated")
        runner._common_checks(o, proc.pid, watch, _meta(stdout), stderr, binary)
        assert o.problems == []
    finally:
        watch.stop()
        _reap(proc)

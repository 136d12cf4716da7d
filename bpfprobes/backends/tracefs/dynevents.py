"""The kernel's own dynamic events as a tracing backend: kprobe_events and
uprobe_events lines, enabled in a trace instance of our own, read from its
trace_pipe. No BCC, no compiler, no headers. Also: the kprobe/uprobe events BCC
writes to those files for us, and the reaper of what killed runs left.

Ownership: everything a run creates is named for its random token
(runtoken.py), never for its PID: the events' group is `bpfprobes_TOKEN`, the
instance `instances/bpfprobes-TOKEN`, and the run records each object in its
lock file before creating it. BCC's events (`kprobes/p_FN_bcc_PID`,
`kprobes/r_FN_bcc_PID` or `r<N>:` with maxactive, `uprobes/p_PATH_0xADDR_bcc_PID`)
are recorded when an attach of ours made them appear. The reaper removes only
what a dead run (its lock free) recorded; other users' events, the top-level
buffer, other instances are never touched, whatever their names look like.
Removing the instance first matters: an event enabled anywhere cannot be deleted.

Every line written to kprobe_events/uprobe_events passes check_line first:
exactly one line, split by the kernel into the tokens we meant, its event in
our group.
"""
from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bpfprobes.backends.tracefs import runtoken
from bpfprobes.base.errors import KernelError, UsageError

GROUP = "bpfprobes_{token}"
INSTANCE = "bpfprobes-{token}"
EVENT_FILES = {"kprobe": "kprobe_events", "uprobe": "uprobe_events"}

# A definition line as the events files list it: head, GROUP/EVENT, the rest.
_LINE = re.compile(r"^(?P<head>[pr]\d*):(?P<group>[^/\s]+)/(?P<event>\S+)(?:\s|$)")


# ---------------------------------------------------------------- the line gate

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_NAME = 63                  # MAX_EVENT_NAME_LEN (64) with its NUL
_MAX_LINE = 4094                # the kernel's WRITE_BUFSIZE (4096), less "\n" and NUL
_TYPES = {f"{k}{b}" for k in "usx" for b in (8, 16, 32, 64)} | {"string", "ustring", "symbol"}
_SIMPLE_FETCH = re.compile(r"%[a-z][a-z0-9_]*|\$arg[1-9][0-9]*|\$stack[0-9]*|\$retval|\$comm"
                           r"|@[A-Za-z_.][A-Za-z0-9_.]*(?:[+-][0-9]+)?|@0x[0-9a-f]+")
_DEREF = re.compile(r"[+-]u?[0-9]+\((.*)\)")
_KPROBE_TARGET = re.compile(r"(?:[A-Za-z0-9_-]+:)?[A-Za-z_.][A-Za-z0-9_.]*"
                            r"(?:\+(?:[0-9]+|0x[0-9a-f]+))?|0x[0-9a-f]+")
_UPROBE_TARGET = re.compile(rb"/[^\x00-\x20\x7f#]*:0x[0-9a-f]+")


def _fetch_ok(text: str, depth: int = 0) -> bool:
    if _SIMPLE_FETCH.fullmatch(text):
        return True
    m = _DEREF.fullmatch(text)
    return m is not None and depth < 16 and _fetch_ok(m.group(1), depth + 1)


def _arg_ok(token: bytes) -> bool:
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        return False
    name, eq, rest = text.partition("=")
    if not eq or not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        return False
    fetch, colon, kind = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if colon and kind not in _TYPES:
        return False
    return _fetch_ok(fetch)


def check_line(kind: str, line: str, group: str, event: str) -> None:
    """Refuse, before anything is written, a kprobe_events/uprobe_events line
    that is not exactly one definition of `group`/`event`: the kernel splits
    what it is given at newlines, cuts at '#', and splits words at its isspace()
    (0xa0 included), so a newline, a space or a '#' in a path or a name would
    add a second event, an argument, or change the target."""
    def refuse(why: str) -> UsageError:
        shown = line.encode("unicode_escape", "backslashreplace").decode("ascii")
        return UsageError(f"refusing to write {EVENT_FILES.get(kind, kind)} line "
                          f"{shown[:200]!r}: {why}",
                          "paths and names must not hold spaces, newlines, '#' or "
                          "control characters")
    if kind not in EVENT_FILES:
        raise refuse(f"unknown kind {kind!r}")
    data = line.encode("utf-8", "surrogateescape")
    if any(b < 0x20 or b == 0x7f for b in data):
        raise refuse("it holds a newline or another control character")
    if b"#" in data:
        raise refuse("the kernel takes what follows '#' for a comment")
    if len(data) > _MAX_LINE:
        raise refuse(f"longer than the kernel takes ({_MAX_LINE} bytes)")
    if b"\xa0" in data:        # the kernel's isspace() is Latin-1's: 0xa0 splits words
        raise refuse("it holds the byte 0xa0, which the kernel splits words at")
    words = data.split(b" ")    # control characters are refused above: ' ' is the only space
    if any(not w for w in words):
        raise refuse("it holds a leading, trailing or double space")
    head = re.fullmatch(rb"([pr])([0-9]*):([^/]*)/(.*)", words[0])
    if head is None:
        raise refuse("it does not start with p:GROUP/EVENT or r:GROUP/EVENT")
    if len(words) < 2:
        raise refuse("no probe target")
    letter, maxactive, got_group, got_event = (x.decode("utf-8", "replace")
                                               for x in head.groups())
    if got_group != group:
        raise refuse(f"its group {got_group!r} is not ours ({group!r})")
    if got_event != event:
        raise refuse(f"its event {got_event!r} is not {event!r}")
    for name in (group, event):
        if not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
            raise refuse(f"{name!r} is not a valid event or group name")
    if maxactive and (letter != "r" or kind != "kprobe"):
        raise refuse("maxactive is only for kretprobes")
    target_ok = _UPROBE_TARGET.fullmatch(words[1]) if kind == "uprobe" else \
        _KPROBE_TARGET.fullmatch(words[1].decode("ascii", "replace"))
    if not target_ok:
        raise refuse(f"{words[1].decode('utf-8', 'replace')!r} is not a "
                     f"{'PATH:0xOFFSET' if kind == 'uprobe' else 'kernel symbol'} target")
    for w in words[2:]:
        if not _arg_ok(w):
            raise refuse(f"{w.decode('utf-8', 'replace')!r} is not NAME=FETCHARG[:TYPE]")


# ---------------------------------------------------------------- the files

def _append(path: Path, line: str) -> None:
    """One write of one line, without truncating: Python's open(..., "a") seeks to
    the end, which these files refuse (EINVAL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        os.write(fd, (line + "\n").encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


def _definitions(tracefs: Path, kind: str) -> dict[str, str]:
    """GROUP/EVENT -> its definition line, as the events file lists them now."""
    try:
        text = (tracefs / EVENT_FILES[kind]).read_text(errors="surrogateescape")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out[f"{m['group']}/{m['event']}"] = line
    return out


def _remove_event(tracefs: Path, kind: str, full_name: str) -> bool:
    """`-:GROUP/EVENT`; True when it is gone (or was already)."""
    try:
        _append(tracefs / EVENT_FILES[kind], f"-:{full_name}")
        return True
    except FileNotFoundError:
        return True
    except OSError as e:
        return e.errno == errno.ENOENT      # EBUSY: enabled somewhere still


def _remove_group(tracefs: Path, group: str) -> tuple[list[str], bool]:
    """Every event of `group` (a group of ours, by token); (removed, all gone)."""
    removed, ok = [], True
    for kind in EVENT_FILES:
        for full in _definitions(tracefs, kind):
            if full.split("/", 1)[0] == group:
                if _remove_event(tracefs, kind, full):
                    removed.append(full)
                else:
                    ok = False
    return removed, ok


def _rmdir_instance(tracefs: Path, name: str) -> tuple[bool, bool]:
    """(removed now, gone)."""
    try:
        (tracefs / "instances" / name).rmdir()
        return True, True
    except FileNotFoundError:
        return False, True
    except OSError:
        return False, False


# ---------------------------------------------------------------- the reaper

def reap(tracefs: Path | None, run_dir: Path = runtoken.RUN_DIR) -> list[str]:
    """Remove what dead runs of ours recorded (instance, our group's events, BCC
    events made by their attaches); what was removed. A run whose lock file we
    cannot see is alive for us; what older versions (before run tokens) left is
    never touched."""
    if tracefs is None:
        return []
    removed: list[str] = []
    for dead in runtoken.dead_runs(run_dir):
        ok = False
        try:
            got, ok = _reap_run(tracefs, dead)
            removed += got
        except OSError:
            pass                # best effort: its lock file stays for the next start
        finally:
            dead.finish(ok)
    # Runs before tokens (bpfprobes_PID / bpfprobes-PID) are not reaped any more: their
    # PID was the one in the run's own PID namespace (a container's), which nothing
    # here can tell from a live process with that number elsewhere. Left for a human.
    return removed


_ALLOWED = {  # record kind -> does this name belong to that run (by its token; BCC's
    # names by the PID in the run's own first record, which BCC put in the name)
    "instance": lambda name, token, pid, rec: name == INSTANCE.format(token=token),
    "group": lambda name, token, pid, rec: name == GROUP.format(token=token),
    "bcc": lambda name, token, pid, rec: pid is not None and rec.get("file") in EVENT_FILES
    and _bcc_name(name, rec.get("file")) and name.endswith(f"_bcc_{pid}")
    and isinstance(rec.get("line"), str),
}


def _run_pid(records: list[dict]) -> int | None:
    """The PID a run wrote in its first record ({"op": "run", "pid": N}), or None."""
    first = records[0] if records else {}
    pid = first.get("pid") if isinstance(first, dict) and first.get("op") == "run" else None
    return pid if type(pid) is int and pid > 0 else None     # bool is an int: not a PID


def _reap_run(tracefs: Path, dead: runtoken.DeadRun) -> tuple[list[str], bool]:
    removed, all_gone = [], True
    todo = runtoken.outstanding(dead.records)
    pid = _run_pid(dead.records)
    # instances first: an event enabled in one cannot be removed
    for rec in sorted(todo, key=lambda r: r.get("kind") != "instance"):
        kind, name = rec.get("kind"), rec.get("name")
        if kind not in _ALLOWED or not isinstance(name, str) \
                or not _ALLOWED[kind](name, dead.token, pid, rec):
            continue                        # not a name this run could own: never touched
        if kind == "instance":
            now, gone = _rmdir_instance(tracefs, name)
            removed += [f"instances/{name}"] if now else []
        elif kind == "group":
            got, gone = _remove_group(tracefs, name)
            removed += got
        else:
            # BCC's names hold a PID: remove only the very definition this run saw
            # (another one under that name is someone else's: ours is gone)
            current = _definitions(tracefs, rec["file"]).get(name)
            mine = current is not None and current == rec["line"]
            gone = not mine or _remove_event(tracefs, rec["file"], name)
            removed += [name] if mine and gone else []
        all_gone = all_gone and gone
    return removed, all_gone


def objects_of(tracefs: Path, pid: int, run_dir: Path = runtoken.RUN_DIR) -> list[str]:
    """What the runs process `pid` made still have in the kernel (event lines,
    `instances/NAME`), found by their tokens: tests use it to check that nothing
    of a run remains. A run that ended with nothing left has no lock file: []."""
    found = []
    for token, todo in runtoken.runs_of(pid, run_dir):
        group, instance = GROUP.format(token=token), INSTANCE.format(token=token)
        for kind in EVENT_FILES:
            defs = _definitions(tracefs, kind)
            found += [line for full, line in defs.items() if full.split("/", 1)[0] == group]
            found += [r["line"] for r in todo if r.get("kind") == "bcc"
                      and r.get("file") == kind and defs.get(r.get("name")) == r.get("line")]
        if (tracefs / "instances" / instance).exists():
            found.append(f"instances/{instance}")
    return found


# ---------------------------------------------------------------- BCC's events

_BCC_FILE = {"kprobe": "kprobe", "kretprobe": "kprobe", "uprobe": "uprobe",
             "uretprobe": "uprobe"}


def _bcc_name(full: str, kind: str | None) -> bool:
    """GROUP/EVENT has the shape of a name BCC gives (libbpf.c create_probe_event)."""
    group, _, event = full.partition("/")
    return kind in EVENT_FILES and group == EVENT_FILES[kind].replace("_events", "s") \
        and re.fullmatch(r"[pr]_[A-Za-z0-9_]*_bcc_[0-9]+", event) is not None


def _bcc_tracefs() -> Path | None:
    for root in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        if (root / "kprobe_events").exists() or (root / "uprobe_events").exists():
            return root
    return None


def _bcc_expected(attach_kind: str, target: str, pid: int) -> re.Pattern:
    """The name BCC gives the event of this attach in this process."""
    letter = "r" if attach_kind.startswith(("kret", "uret")) else "p"
    group = "kprobes" if _BCC_FILE[attach_kind] == "kprobe" else "uprobes"
    if group == "kprobes":     # bcc/__init__.py: "p_"/"r_" + event with '+' and '.' as '_'
        event = re.escape(f"{letter}_{target.replace('+', '_').replace('.', '_')}_bcc_{pid}")
    else:                      # p_PATH_0xADDR[_PID]: the path as BCC resolved it
        event = rf"{letter}_[A-Za-z0-9_]*_0x[0-9a-f]+(?:_[0-9]+)?_bcc_{pid}"
    return re.compile(rf"{group}/{event}")


@contextmanager
def bcc_attach(attach_kind: str, target: str, tracefs: Path | None = None,
               run: runtoken.Run | None = None) -> Iterator[None]:
    """Around one BCC attach: an event of the name BCC gives this attach in this
    process that appears in the events file meanwhile is recorded as this run's
    (BCC writes one where the kernel has no kprobe/uprobe PMU, and for every
    kretprobe with maxactive; a SIGKILL would leave it forever)."""
    file = _BCC_FILE.get(attach_kind)
    tracefs = tracefs or (_bcc_tracefs() if file else None)
    if file is None or tracefs is None:
        yield
        return
    before = _definitions(tracefs, file)
    try:
        yield
    finally:
        after = _definitions(tracefs, file)
        expected = _bcc_expected(attach_kind, target, os.getpid())
        new = [(n, line) for n, line in after.items()
               if n not in before and expected.fullmatch(n)]
        if new:
            run = run or runtoken.current()
            for name, line in new:
                run.record("bcc", name, file=file, line=line)


def bcc_detached(tracefs: Path | None = None, run: runtoken.Run | None = None) -> list[str]:
    """After BCC's cleanup: what this run recorded of BCC's events and BCC did not
    remove (an attach that failed half way leaves its event) is removed now; the
    rest is marked gone. What could not be removed is left to the next start."""
    run = run or runtoken.existing()
    tracefs = tracefs or _bcc_tracefs()
    if run is None or tracefs is None:
        return []
    left = []
    for (kind, name), rec in list(run.live.items()):
        if kind != "bcc":
            continue
        current = _definitions(tracefs, rec["file"]).get(name)
        if current != rec["line"] or _remove_event(tracefs, rec["file"], name):
            run.forget(kind, name)          # gone, or the name is someone else's now
        else:
            left.append(name)
    return left


# ---------------------------------------------------------------- a session

class Session:
    """Our instance and our events, removed on close (a context manager)."""

    def __init__(self, tracefs: Path, buffer_kb: int = 4096, stacks: bool = False,
                 run: runtoken.Run | None = None) -> None:
        self.tracefs = tracefs
        self.run = runtoken.current() if run is None else run
        self.token = self.run.token
        self.group = GROUP.format(token=self.token)
        self.instance = tracefs / "instances" / INSTANCE.format(token=self.token)
        self.events: list[tuple[str, str]] = []       # (kprobe|uprobe, event name)
        # recorded before it exists: a SIGKILL at any point leaves nothing unrecorded
        self.run.record("instance", self.instance.name)
        self.run.record("group", self.group)
        try:
            self.instance.mkdir()
        except OSError as e:
            self.run.forget("instance", self.instance.name)
            self.run.forget("group", self.group)
            raise KernelError(f"cannot create the trace instance {self.instance}: {e.strerror}",
                              "tracefs instances need root and a kernel with them (4.2+)")
        try:
            self._write("buffer_size_kb", str(buffer_kb))
            if (self.instance / "buffer_percent").exists():
                self._write("buffer_percent", "0")        # wake the reader at any event
            self._write("options/record-tgid", "1")      # the process, not only the thread
            if stacks:
                self._write("options/stacktrace", "1")
        except BaseException:
            self.close()
            raise

    def _write(self, rel: str, text: str) -> None:
        (self.instance / rel).write_text(text)

    def add(self, kind: str, line: str, event: str) -> None:
        """Register one kprobe_events/uprobe_events `line` (its event must be
        `event` of our group) and enable it in our instance only."""
        check_line(kind, line, self.group, event)
        path = self.tracefs / EVENT_FILES[kind]
        self.events.append((kind, event))       # before the write: close() removes it
        try:
            _append(path, line)
        except OSError as e:
            self.events.pop()
            reason = {errno.ENOENT: "no such function or file offset",
                      errno.EINVAL: "the kernel refused the definition",
                      errno.EEXIST: "the event exists already"}.get(e.errno, e.strerror)
            log = self._error_log()
            raise KernelError(f"cannot add {EVENT_FILES[kind]} line {line!r}: {reason}",
                              log or "see the kernel's tracing/error_log") from e
        try:
            self._write(f"events/{self.group}/{event}/enable", "1")
        except OSError as e:
            raise KernelError(f"cannot enable {self.group}/{event}: {e.strerror}") from e

    def _error_log(self) -> str:
        try:
            lines = (self.tracefs / "error_log").read_text().strip().splitlines()
        except OSError:
            return ""
        return " ".join(ln.strip() for ln in lines[-3:])

    def pipe(self) -> int:
        """A non-blocking fd on our instance's trace_pipe."""
        return os.open(self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def overrun(self) -> int:
        """Events the ring buffer overwrote before they were read (every CPU)."""
        total = 0
        per_cpu = self.instance / "per_cpu"
        for cpu in per_cpu.iterdir() if per_cpu.is_dir() else ():
            try:
                stats = (cpu / "stats").read_text()
            except OSError:
                continue
            m = re.search(r"^overrun: (\d+)", stats, re.M)
            total += int(m.group(1)) if m else 0
        return total

    def close(self) -> None:
        """Instance first (it disables what is enabled in it), then our events;
        each is marked gone in the run's record once it is (idempotent)."""
        removed, gone = _rmdir_instance(self.tracefs, self.instance.name)
        if not gone:
            for kind, event in self.events:
                try:
                    self._write(f"events/{self.group}/{event}/enable", "0")
                except OSError:
                    pass
            removed, gone = _rmdir_instance(self.tracefs, self.instance.name)
        if gone:
            self.run.forget("instance", self.instance.name)
        for kind, event in reversed(self.events):
            _remove_event(self.tracefs, kind, f"{self.group}/{event}")
        self.events = []
        _, all_gone = _remove_group(self.tracefs, self.group)
        if gone and all_gone:
            self.run.forget("group", self.group)    # else the next start reaps it

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Our kernel objects, and only ours, without a kernel: the gate every
kprobe_events/uprobe_events line passes, the run lock (token, liveness, modes),
and the reaper's decisions, on a temp directory laid out like tracefs. The
kernel's own behaviour is checked by tests/host/test_ownership.py."""
from __future__ import annotations

import fcntl
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from bpfprobes.backends.tracefs import dynevents, runtoken
from bpfprobes.base.errors import BpfprobesError, UsageError
from bpfprobes.kernel import arch
from bpfprobes.plan import spec

G = "bpfprobes_0123456789abcdef"


# ---------------------------------------------------------------- the line gate

GOOD = [
    ("kprobe", f"p:{G}/do_sys_openat2 do_sys_openat2 file=+0(%si):string flags=%dx:x32",
     "do_sys_openat2"),
    ("kprobe", f"r16:{G}/vfs_read vfs_read ret=$retval:s64", "vfs_read"),
    ("kprobe", f"p:{G}/p9 9pnet_virtio:p9_virtio_request", "p9"),
    ("kprobe", f"p:{G}/x vfs_read+4 s=$stack2:x64 j=@jiffies:x64 c=$comm", "x"),
    ("uprobe", f"p:{G}/three /tmp/pt:0x11e3 a=%di:s32 s=+0(%dx):string", "three"),
    ("uprobe", f"r:{G}/three__return /usr/lib/x86_64-linux-gnu/libc.so.6:0x4f2a0 "
               "r=$retval:s64", "three__return"),
    ("uprobe", f"p:{G}/u /tmp/ünïcode:0x10", "u"),     # non-ASCII is fine, 0xa0 is not
]


@pytest.mark.parametrize("kind, line, event", GOOD)
def test_well_formed_lines_of_our_group_pass(kind, line, event):
    dynevents.check_line(kind, line, G, event)


BAD = [
    # a newline (or CR, NUL, tab) would add a second definition or split a word
    ("uprobe", f"p:{G}/e /tmp/a:0x10\np:{G}/f /tmp/b:0x10", "newline"),
    ("uprobe", f"p:{G}/e /tmp/a\n:0x10", "newline"),
    ("uprobe", f"p:{G}/e /tmp/a\r:0x10", "control"),
    ("uprobe", f"p:{G}/e /tmp/a\0b:0x10", "control"),
    ("uprobe", f"p:{G}/e /tmp/a\tb:0x10", "control"),
    # a space in a path: the kernel splits words at it
    ("uprobe", f"p:{G}/e /tmp/my prog:0x10", "PATH:0xOFFSET"),
    ("uprobe", f"p:{G}/e /tmp/a:0x10 b:0x10", "NAME=FETCHARG"),
    ("uprobe", f"p:{G}/e /tmp/a:0x10 x=%di /b:0x20", "NAME=FETCHARG"),
    ("uprobe", f"p:{G}/e /tmp/a:0x10 x=/b:0x20", "NAME=FETCHARG"),
    ("uprobe", f"p:{G}/e /tmp/a:0x1 x=%di:0x20", "NAME=FETCHARG"),
    ("uprobe", f"p:{G}/e /tmp/a\xa0b:0x10", "0xa0"),              # U+00A0 is c2 a0
    ("uprobe", f"p:{G}/e /tmp/\xe0:0x10", "0xa0"),                # 'à' is c3 a0
    ("uprobe", f"p:{G}/e  /tmp/a:0x10", "double space"),
    ("uprobe", f"p:{G}/e /tmp/a:0x10 ", "trailing"),
    ("uprobe", f"p:{G}/e /tmp/a#b:0x10", "comment"),
    # another group, another event, not a definition
    ("uprobe", "p:myteam/e /tmp/a:0x10", "not ours"),
    ("uprobe", f"p:{G}x/e /tmp/a:0x10", "not ours"),
    ("uprobe", f"p:{G}/f /tmp/a:0x10", "is not 'e'"),
    ("uprobe", f"p:{G}/e/f /tmp/a:0x10", "is not 'e'"),
    ("uprobe", f"-:{G}/e", "does not start"),
    ("uprobe", f"p:{G}/e", "no probe target"),
    ("kprobe", f"e:{G}/e sched/sched_switch", "does not start"),
    ("uprobe", f"r4:{G}/e /tmp/a:0x10", "maxactive"),
    ("uprobe", f"p:{G}/e /tmp/a:0x10%return", "PATH:0xOFFSET"),
    ("uprobe", f"p:{G}/e relative:0x10", "PATH:0xOFFSET"),
    ("kprobe", f"p:{G}/e vfs_read x=%di:u128", "NAME=FETCHARG"),
    ("kprobe", f"p:{G}/e vfs_read x==%di", "NAME=FETCHARG"),
    ("kprobe", f"p:{G}/e vfs_read x=+0(%di", "NAME=FETCHARG"),
    ("kprobe", f"p:{G}/e vfs_read " + " ".join(f"a{i}=%di" for i in range(600)), "longer"),
    ("probe", f"p:{G}/e vfs_read", "unknown kind"),
]


@pytest.mark.parametrize("kind, line, why", BAD)
def test_anything_else_is_refused_in_one_line(kind, line, why):
    with pytest.raises(UsageError) as e:
        dynevents.check_line(kind, line, G, "e")
    assert why in e.value.what and "\n" not in e.value.what


def test_what_spec_writes_passes_the_gate_on_every_architecture():
    texts = ["p:do_sys_openat2 file=+0($arg2):string flags=$arg3:x32 c=$comm",
             "r:do_sys_openat2 ret=$retval:s64", "r16:vfs_read", "p:vfs_read+4 s=$stack2",
             "p:9pnet_virtio:p9_virtio_request", "p:vfs_read j=@jiffies z=+8($arg1):ustring",
             "p:/tmp/pt:three a=$arg1:s32 s=+0($arg3):string", "r:/tmp/pt:three r=$retval",
             "p:/tmp/pt:0x1234"]
    for abi in arch.ALL:
        for text in texts:
            s = spec.parse(text, abi)
            s = replace(s, group=G, event=s.event)
            line = spec.to_kprobe_events(s, abi, uprobe_offset=0x1100 if s.is_uprobe
                                         and s.symbol else None)
            dynevents.check_line("uprobe" if s.is_uprobe else "kprobe", line, G, s.event)


def _fake_tracefs(tmp_path: Path) -> Path:
    """Files and directories named as in tracefs. A plain directory cannot act as
    the kernel: "-:" lines are appended, not obeyed, so tests read what was asked."""
    t = tmp_path / "tracing"
    (t / "instances").mkdir(parents=True)
    for name in ("kprobe_events", "uprobe_events"):
        (t / name).write_text("")
    return t


def test_a_session_refuses_a_bad_line_before_writing_anything(tmp_path):
    tracefs = _fake_tracefs(tmp_path)
    run = runtoken.Run.create(tmp_path / "run")
    s = dynevents.Session.__new__(dynevents.Session)     # add() alone: no instance to fake
    s.tracefs, s.run, s.group, s.events = tracefs, run, f"bpfprobes_{run.token}", []
    for line in (f"p:{s.group}/e /tmp/a:0x10\np:{s.group}/f /tmp/b:0x10",
                 f"p:{s.group}/e /tmp/my prog:0x10", "p:otherteam/e /tmp/a:0x10"):
        with pytest.raises(UsageError):
            s.add("uprobe", line, "e")
    assert (tracefs / "uprobe_events").read_text() == "" and s.events == []
    run.release()


# ---------------------------------------------------------------- the run lock

def test_tokens_are_random_and_never_all_digits():
    tokens = {runtoken.new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    assert all(runtoken.is_token(t) and not t.isdigit() for t in tokens)
    assert not runtoken.is_token("1234567890123456")


def test_run_lock_is_private_and_held_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        run = runtoken.Run.create(tmp_path / "run")
    finally:
        os.umask(old)
    d, f = tmp_path / "run", tmp_path / "run" / f"{run.token}.lock"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and stat.S_IMODE(f.stat().st_mode) == 0o600
    fd = os.open(f, os.O_RDONLY)
    with pytest.raises(BlockingIOError):                # held: alive
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert list(runtoken.dead_runs(d)) == []
    run.release()                                       # nothing recorded: the file goes
    assert not f.exists()
    os.close(fd)


def test_a_run_directory_we_cannot_trust_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BpfprobesError):
        runtoken.Run.create(tmp_path / "run")
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)          # someone could have planted a lock there
    with pytest.raises(BpfprobesError):
        runtoken.Run.create(tmp_path / "open")
    assert list(runtoken.dead_runs(tmp_path / "run")) == []    # nothing is provably dead


def _dead_run(run_dir: Path, records=lambda token: []) -> str:
    """A run made in a child that records records(its token) and then dies
    without cleaning up, as a SIGKILL leaves it; its token. (records runs in the
    child: os.getpid() there is the run's PID, the one BCC puts in names)"""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            run = runtoken.Run.create(run_dir)
            for kind, name, extra in records(run.token):
                run.record(kind, name, **extra)
            os.write(w, f"{run.token} {os.getpid()}".encode())
        finally:
            os._exit(0)                 # no atexit: the lock file stays, its lock goes
    os.close(w)
    token, _ = os.read(r, 64).decode().split()
    os.close(r)
    os.waitpid(pid, 0)
    _dead_run.pid = pid
    return token


def test_records_and_forgets(tmp_path):
    run = runtoken.Run.create(tmp_path / "run")
    run.record("group", "g1")
    run.record("instance", "i1")
    run.forget("group", "g1")
    recs = [json.loads(x) for x in (tmp_path / "run" / f"{run.token}.lock").read_text()
            .splitlines()]
    assert [(r["kind"], r["name"]) for r in runtoken.outstanding(recs)] == [("instance", "i1")]
    run.release()                       # something left: the file stays for a reaper
    assert (tmp_path / "run" / f"{run.token}.lock").exists()


# ---------------------------------------------------------------- the reaper

def _removals(tracefs: Path) -> set[str]:
    return {ln[2:] for name in ("kprobe_events", "uprobe_events")
            for ln in (tracefs / name).read_text().splitlines() if ln.startswith("-:")}


def test_the_reaper_removes_what_a_dead_run_recorded_and_nothing_else(tmp_path):
    tracefs, run_dir = _fake_tracefs(tmp_path), tmp_path / "run"
    bcc_line = "r16:kprobes/r_vfs_read_bcc_{pid} vfs_read"
    changed = "p:kprobes/p_vfs_write_bcc_{pid} vfs_write"
    tok = _dead_run(run_dir, lambda t: [      # in the child: its PID is the run's
        ("instance", f"bpfprobes-{t}", {}), ("group", f"bpfprobes_{t}", {}),
        ("bcc", f"kprobes/r_vfs_read_bcc_{os.getpid()}",
         {"file": "kprobe", "line": bcc_line.format(pid=os.getpid())}),
        # its definition changed since: someone else's now
        ("bcc", f"kprobes/p_vfs_write_bcc_{os.getpid()}",
         {"file": "kprobe", "line": changed.format(pid=os.getpid()) + " x"}),
        ("instance", "otherteam", {}), ("group", "myteam", {}),   # not names it can own
        ("bcc", "myteam/parse_cmd_bcc_999999", {"file": "kprobe",
                                                "line": "p:myteam/parse_cmd_bcc_999999 vfs_read"})])
    pid = _dead_run.pid
    bcc_line, changed = bcc_line.format(pid=pid), changed.format(pid=pid)
    lock = run_dir / f"{tok}.lock"
    alive = runtoken.Run.create(run_dir)
    unlocked_token = runtoken.new_token()               # an instance with no lock file
    for name in (f"bpfprobes-{tok}", "otherteam", f"bpfprobes-{alive.token}",
                 f"bpfprobes-{unlocked_token}"):
        (tracefs / "instances" / name).mkdir()
    (tracefs / "kprobe_events").write_text("\n".join([
        f"p:bpfprobes_{tok}/a vfs_read", f"r:bpfprobes_{tok}/a__return vfs_read",
        bcc_line, changed, "p:myteam/parse_cmd_bcc_999999 vfs_read",
        "r16:kprobes/r_vfs_read_bcc_999999 vfs_read", f"p:bpfprobes_{alive.token}/b vfs_read",
        f"p:bpfprobes_{unlocked_token}/c vfs_read"]) + "\n")
    removed = dynevents.reap(tracefs, run_dir)
    assert set(removed) == {f"instances/bpfprobes-{tok}", f"bpfprobes_{tok}/a",
                            f"bpfprobes_{tok}/a__return", f"kprobes/r_vfs_read_bcc_{pid}"}
    assert _removals(tracefs) == {f"bpfprobes_{tok}/a", f"bpfprobes_{tok}/a__return",
                                  f"kprobes/r_vfs_read_bcc_{pid}"}
    assert sorted(p.name for p in (tracefs / "instances").iterdir()) == sorted(
        ["otherteam", f"bpfprobes-{alive.token}", f"bpfprobes-{unlocked_token}"])
    # a plain file cannot forget lines: the kernel would have; the lock file is gone
    assert not lock.exists() and (run_dir / f"{alive.token}.lock").exists()
    alive.release()


def test_bcc_names_of_a_dead_run_must_carry_the_pid_of_its_own_run_record(tmp_path):
    """A lock file's BCC records are only trusted for names ending in _bcc_<the PID
    in its own {"op": "run"} record>: a record naming another process's BCC event
    (same shape, same line) is never acted on."""
    tracefs, run_dir = _fake_tracefs(tmp_path), tmp_path / "run"
    other = os.getpid()                 # a live process's BCC event, recorded by the dead run
    lines = {f"kprobes/p_vfs_read_bcc_{other}": f"p:kprobes/p_vfs_read_bcc_{other} vfs_read",
             "kprobes/p_vfs_read_bcc_1": "p:kprobes/p_vfs_read_bcc_1 vfs_read"}
    tok = _dead_run(run_dir, lambda t: [("bcc", name, {"file": "kprobe", "line": line})
                                        for name, line in lines.items()])
    own = f"kprobes/r_vfs_read_bcc_{_dead_run.pid}"
    lines[own] = f"r:{own} vfs_read"
    with open(run_dir / f"{tok}.lock", "a") as f:   # its own, added as the run would have
        f.write(json.dumps({"op": "add", "kind": "bcc", "name": own, "file": "kprobe",
                            "line": lines[own]}) + "\n")
    (tracefs / "kprobe_events").write_text("\n".join(lines.values()) + "\n")
    assert dynevents.reap(tracefs, run_dir) == [own]
    assert _removals(tracefs) == {own}


@pytest.mark.parametrize("first", [
    {"op": "add", "pid": 7}, {"op": "run"}, {"op": "run", "pid": "7"}, {"op": "run", "pid": True},
    {"op": "run", "pid": 0}, {"op": "run", "pid": -7}, "x"])
def test_without_a_well_formed_run_record_no_bcc_name_is_trusted(first):
    assert dynevents._run_pid([first, {"op": "add"}]) is None
    assert dynevents._run_pid([{"op": "run", "pid": 7}]) == 7


def test_names_of_runs_before_tokens_are_never_reaped(tmp_path):
    """bpfprobes_PID / bpfprobes-PID: that PID was in its run's own namespace (a
    container's): no process here can be told dead by it."""
    tracefs, run_dir = _fake_tracefs(tmp_path), tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    gone = 4194303                      # PID_MAX_LIMIT: no process has it here
    (tracefs / "instances" / f"bpfprobes-{gone}").mkdir()
    (tracefs / "kprobe_events").write_text(f"p:bpfprobes_{gone}/a vfs_read\n")
    assert dynevents.reap(tracefs, run_dir) == []
    assert _removals(tracefs) == set() and (tracefs / "instances" / f"bpfprobes-{gone}").is_dir()


def test_a_dead_run_whose_objects_cannot_go_yet_is_kept_for_the_next_start(tmp_path):
    tracefs, run_dir = _fake_tracefs(tmp_path), tmp_path / "run"
    tok = _dead_run(run_dir, lambda t: [("instance", f"bpfprobes-{t}", {})])
    busy = tracefs / "instances" / f"bpfprobes-{tok}"
    busy.mkdir()
    (busy / "trace").write_text("")             # rmdir fails, as on a busy instance
    assert dynevents.reap(tracefs, run_dir) == []
    assert (run_dir / f"{tok}.lock").exists()
    (busy / "trace").unlink()
    assert dynevents.reap(tracefs, run_dir) == [f"instances/bpfprobes-{tok}"]
    assert not (run_dir / f"{tok}.lock").exists()


def test_bcc_events_of_an_attach_are_recorded_only_when_they_are_its_own(tmp_path):
    tracefs, run_dir = _fake_tracefs(tmp_path), tmp_path / "run"
    run = runtoken.Run.create(run_dir)
    me = os.getpid()
    (tracefs / "kprobe_events").write_text(f"p:kprobes/p_vfs_read_bcc_{me} vfs_read\n")
    with dynevents.bcc_attach("kretprobe", "vfs_read", tracefs, run):
        with open(tracefs / "kprobe_events", "a") as f:     # what BCC (and others) write
            f.write(f"r16:kprobes/r_vfs_read_bcc_{me} vfs_read\n"
                    f"r:kprobes/r_vfs_read_bcc_{me + 1} vfs_read\n"
                    f"r:myteam/r_vfs_read_bcc_{me} vfs_read\n"
                    f"r:kprobes/r_vfs_write_bcc_{me} vfs_write\n")
    assert list(run.live) == [("bcc", f"kprobes/r_vfs_read_bcc_{me}")]
    assert run.live[("bcc", f"kprobes/r_vfs_read_bcc_{me}")]["line"] == \
        f"r16:kprobes/r_vfs_read_bcc_{me} vfs_read"
    with dynevents.bcc_attach("uretprobe", "three", tracefs, run):
        with open(tracefs / "uprobe_events", "a") as f:
            f.write(f"r:uprobes/r__tmp_pt_0x11e3_bcc_{me} /tmp/pt:0x00000000000011e3\n")
    assert ("bcc", f"uprobes/r__tmp_pt_0x11e3_bcc_{me}") in run.live
    # after BCC's cleanup, what is still there is ours to remove; then forgotten
    assert dynevents.bcc_detached(tracefs, run) == []
    assert _removals(tracefs) == {f"kprobes/r_vfs_read_bcc_{me}",
                                  f"uprobes/r__tmp_pt_0x11e3_bcc_{me}"}
    assert run.live == {}
    run.release()


def test_objects_of_a_process_are_found_by_its_runs_tokens(tmp_path):
    tracefs, run_dir = _fake_tracefs(tmp_path), tmp_path / "run"
    run = runtoken.Run.create(run_dir)
    other = _dead_run(run_dir)
    me = os.getpid()
    run.record("bcc", f"uprobes/p__tmp_pt_0x10_bcc_{me}", file="uprobe",
               line=f"p:uprobes/p__tmp_pt_0x10_bcc_{me} /tmp/pt:0x10")
    (tracefs / "instances" / f"bpfprobes-{run.token}").mkdir()
    (tracefs / "instances" / f"bpfprobes-{other}").mkdir()
    (tracefs / "uprobe_events").write_text(
        f"p:bpfprobes_{run.token}/a /tmp/pt:0x10\np:bpfprobes_{other}/a /tmp/pt:0x10\n"
        f"p:uprobes/p__tmp_pt_0x10_bcc_{me} /tmp/pt:0x10\n")
    assert sorted(dynevents.objects_of(tracefs, me, run_dir)) == sorted([
        f"p:bpfprobes_{run.token}/a /tmp/pt:0x10",
        f"p:uprobes/p__tmp_pt_0x10_bcc_{me} /tmp/pt:0x10",
        f"instances/bpfprobes-{run.token}"])
    run.forget("bcc", f"uprobes/p__tmp_pt_0x10_bcc_{me}")
    run.release()

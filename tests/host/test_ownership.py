"""Our kernel objects, and only ours, on the real tracefs: other users' events
and instances (BCC-looking ones too) survive our starts and reaps; runs in two
PID namespaces (both PID 1 there) work at once; a run SIGKILLed in a PID
namespace is reaped by the next start, found by the token of that run."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import threading
from pathlib import Path


from bpfprobes.backends.tracefs import dynevents, runtoken
from tooling import PYTHON, ROOT, run_tool, settle, unique

TRACEFS = Path("/sys/kernel/tracing")




def entry_offset(path: str) -> int:
    """The file offset of an ELF64 executable's entry point (a valid instruction)."""
    data = Path(path).read_bytes()
    entry, phoff = struct.unpack_from("<QQ", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_vaddr <= entry < p_vaddr + p_filesz:
            return entry - p_vaddr + p_offset
    raise AssertionError(f"no PT_LOAD holds the entry of {path}")


def events_text() -> str:
    return (TRACEFS / "uprobe_events").read_text()


def _write(name: str, line: str) -> None:
    fd = os.open(TRACEFS / name, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def run_target(binary: str, tag: str) -> int:
    p = subprocess.Popen([binary, tag, "1", "0", "/nonexistent"], stdin=subprocess.PIPE,
                         text=True)
    p.communicate("go\n", timeout=60)
    return p.pid


class NsTool:
    """`bpfprobes probe` as PID 1 of a PID namespace of its own (and its own /proc)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", PYTHON, "-m",
             "bpfprobes.cli.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace")
        self.lines: list[str] = []
        self.err: list[str] = []
        self._meta = threading.Event()
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, True)),
                         threading.Thread(target=self._read, args=(self.proc.stderr, False))]
        for t in self._threads:
            t.daemon = True
            t.start()

    def _read(self, stream, out: bool) -> None:
        for line in stream:
            (self.lines if out else self.err).append(line.rstrip("\n"))
            if out and line.startswith('{"type":"meta"'):
                self._meta.set()
        self._meta.set()

    def meta(self) -> dict:
        """The JSON meta line: the run is live."""
        assert self._meta.wait(120), f"did not start: {self.err}"
        metas = [json.loads(x) for x in self.lines if x.startswith('{"type":"meta"')]
        assert metas, f"did not start: {self.err}"
        return metas[0]

    def tool_pid(self) -> int:
        """The tool's PID as this namespace sees it (PID 1 in its own)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def stop(self, sig: int = signal.SIGINT) -> int:
        os.kill(self.tool_pid(), sig)
        rc = self.proc.wait(30)
        for t in self._threads:
            t.join(5)
        return rc

    def events(self) -> list[dict]:
        return [e for e in map(json.loads, (x for x in self.lines if x.startswith("{")))
                if e["type"] == "event"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()                    # --kill-child takes the tool along
            self.proc.wait(30)


def token_of(meta: dict) -> str:
    name = Path(meta["instance"]).name
    assert name.startswith("bpfprobes-")
    token = name[len("bpfprobes-"):]
    assert runtoken.is_token(token)
    assert all(line.split()[0].split(":", 1)[1].startswith(f"bpfprobes_{token}/")
               for line in meta["events"])
    return token


def test_other_users_events_and_instances_survive_our_starts_and_reaps(target_bin):
    off = entry_offset("/bin/true")
    alive = os.getpid()                     # a live PID, as runs before tokens named theirs
    foreign = [f"p:myteam/parse_cmd_bcc_999999 /bin/true:{off:#x}",          # any group
               f"p:uprobes/p__bin_true_{off:#x}_bcc_999999 /bin/true:{off:#x}",   # BCC's names
               f"r:uprobes/r__bin_true_{off:#x}_bcc_999999 /bin/true:{off:#x}",
               f"p:bpfprobes_{alive}/keep /bin/true:{off:#x}"]          # an old run, alive
    instances = [TRACEFS / "instances" / unique("otherteam"),
                 TRACEFS / "instances" / f"bpfprobes-{alive}",
                 TRACEFS / "instances" / f"bpfprobes-{runtoken.new_token()}"]   # no lock seen
    made_events, made_instances = [], []
    try:
        for line in foreign:
            _write("uprobe_events", line)
            made_events.append(line.split()[0].split(":", 1)[1])
        for d in instances:
            d.mkdir()
            made_instances.append(d)
        enable = instances[0] / "events" / "myteam" / "parse_cmd_bcc_999999" / "enable"
        enable.write_text("1")
        r = run_tool("probe", "--backend", "tracefs", "--verbose", "-d", "0.3",
                     f"p:{target_bin}:echo")
        assert r.returncode == 0, r.stderr
        r = run_tool("probe", "--backend", "bpf", "-d", "0.3", f"p:{target_bin}:echo")
        assert r.returncode == 0, r.stderr
        dynevents.reap(TRACEFS)
        dynevents.reap(TRACEFS)
        now = events_text()
        for name in made_events:
            assert f":{name} " in now, f"{name} was removed"
        assert all(d.is_dir() for d in instances)
        assert enable.read_text().strip() == "1"
    finally:
        for d in made_instances:
            d.rmdir()
        for name in made_events:
            _write("uprobe_events", f"-:{name}")


def test_two_runs_in_two_pid_namespaces_at_once(target_bin):
    """Both are PID 1 in their namespace: by PID they would share a name."""
    spec = f"p:{target_bin}:echo x=$arg1:s64"
    runs = [NsTool("probe", "--backend", "tracefs", "--json", spec) for _ in range(2)]
    try:
        tokens = [token_of(t.meta()) for t in runs]
        assert tokens[0] != tokens[1]
        pid = run_target(target_bin, unique("ns"))
        settle(0.6)
        assert [t.stop() for t in runs] == [0, 0], [t.err for t in runs]
        for t in runs:
            assert [(e["pid"], e["args"]["x"]) for e in t.events()] == [(pid, -5), (pid, 5)]
        for token in tokens:
            assert f"bpfprobes_{token}/" not in events_text()
            assert not (TRACEFS / "instances" / f"bpfprobes-{token}").exists()
    finally:
        for t in runs:
            t.kill()


def test_a_sigkilled_namespaced_run_is_reaped_by_the_next_start(target_bin):
    spec = f"p:{target_bin}:echo x=$arg1:s64"
    killed = NsTool("probe", "--backend", "tracefs", "--json", spec)
    try:
        meta = killed.meta()
        token = token_of(meta)
        group, instance = f"bpfprobes_{token}", f"bpfprobes-{token}"
        # while it lives: its instance, events and lock file (a SIGKILL removes none)
        assert (TRACEFS / "instances" / instance).is_dir()
        assert f"p:{group}/echo " in events_text()
        assert (runtoken.RUN_DIR / f"{token}.lock").exists()
        os.kill(killed.tool_pid(), signal.SIGKILL)      # PID 1 of its namespace: all of it
        killed.proc.wait(30)
    finally:
        killed.kill()
    nxt = NsTool("probe", "--backend", "tracefs", "--json", "--verbose", spec)
    try:
        assert token_of(nxt.meta()) != token
        pid = run_target(target_bin, unique("after"))
        settle(0.6)
        assert nxt.stop() == 0, nxt.err
    finally:
        nxt.kill()
    # gone once the next start is live: it reaped them, or a start of another tool did
    # just before (other tracers run on this machine too), and then it says nothing
    said = [ln for ln in nxt.err if ", left by a killed run" in ln and token in ln]
    assert said in ([], [f"bpfprobes probe: removed instances/{instance}, left by a killed run",
                         f"bpfprobes probe: removed {group}/echo, left by a killed run"]), said
    assert not (TRACEFS / "instances" / instance).exists()
    assert f"{group}/" not in events_text()
    assert not (runtoken.RUN_DIR / f"{token}.lock").exists()
    assert [(e["pid"], e["args"]["x"]) for e in nxt.events()] == [(pid, -5), (pid, 5)]


def test_bcc_events_a_killed_run_recorded_are_reaped_and_no_lookalike(tmp_path):
    """BCC writes uprobe_events/kprobe_events lines only where the kernel has no
    PMU, or for kretprobes with maxactive (the VM tier has those): here the write
    BCC would make inside an attach is made by hand, in a child that records it
    around that write and then dies as a SIGKILL leaves it. The kernel's own
    listing of the line is what is recorded and compared."""
    off = entry_offset("/bin/true")
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(go_w)
            os.close(r)
            run = runtoken.Run.create()
            with dynevents.bcc_attach("uretprobe", "main", TRACEFS, run):
                _write("uprobe_events", f"r:uprobes/r__bin_true_{off:#x}_bcc_{os.getpid()} "
                                        f"/bin/true:{off:#x}")
            os.write(w, run.token.encode())
            os.read(go_r, 1)                # alive (its lock held) until the parent has looked
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    token = os.read(r, 64).decode()
    os.close(r)
    ours = f"uprobes/r__bin_true_{off:#x}_bcc_{child}"
    lookalike = f"uprobes/p__bin_true_{off:#x}_bcc_{child}"        # not recorded by anyone
    try:
        _write("uprobe_events", f"p:{lookalike} /bin/true:{off:#x}")
        assert runtoken.is_token(token), token
        records = [json.loads(x) for x in
                   (runtoken.RUN_DIR / f"{token}.lock").read_text().splitlines()]
        assert [(x["kind"], x["name"]) for x in runtoken.outstanding(records)] == [("bcc", ours)]
        assert dynevents.objects_of(TRACEFS, child) == [records[-1]["line"]]
        assert ours not in dynevents.reap(TRACEFS)             # alive: untouched
        os.close(go_w)
        os.waitpid(child, 0)                # dead, its record left as a SIGKILL leaves it
        go_w = None
        removed = dynevents.reap(TRACEFS)
        assert ours in removed or f":{ours} " not in events_text()     # or another start did
        now = events_text()
        assert f":{ours} " not in now and f":{lookalike} " in now
        assert not (runtoken.RUN_DIR / f"{token}.lock").exists()
    finally:
        if go_w is not None:
            os.close(go_w)
            os.waitpid(child, 0)
        for name in (ours, lookalike):
            if f":{name} " in events_text():
                _write("uprobe_events", f"-:{name}")

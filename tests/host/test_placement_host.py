"""Host tier for exact uprobe placement (issue 11, section 1): the real tool, in
both backends, probes `placed+OFFS` of a program built here, whose bytes are
known. The register values seen prove the probe ran exactly between two
given instructions, and the traced process runs on unharmed (exit 0). A place
inside an instruction, a device, a FIFO and text the kernel cannot take are
one line and an exit status, with nothing attached."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bpfprobes.kernel import arch
from tooling import ROOT, Tool, dynamic_events, run_tool, settle, unique

MAGIC = 0x1122334455667788
# +0 movabs $MAGIC, %r11 (10 bytes); +10 mov %rdi, %r10 (3); +13 lea 1(%rdi), %rax (4); +17 ret
PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
long placed(long);
asm(".text\n.globl placed\n.type placed, @function\nplaced:\n"
    "  movabsq $0x1122334455667788, %r11\n"
    "  movq %rdi, %r10\n"
    "  leaq 1(%rdi), %rax\n"
    "  ret\n"
    ".size placed, .-placed\n");

int main(int argc, char **argv)
{
    long x = atol(argv[1]), n = atol(argv[2]);
    if (argc != 3 || getchar() == EOF)
        return 3;
    for (long i = 0; i < n; i++)
        if (placed(x + i) != x + i + 1)
            return 1;
    return 0;
}
"""


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> str:
    if arch.host().name != "x86_64":
        pytest.fail("this test's target is x86_64 code; add the host's to PROGRAM")
    d = tmp_path_factory.mktemp("placement")
    (d / "placed.c").write_text(PROGRAM)
    out = d / unique("placed")
    subprocess.run(["gcc", "-O1", "-o", str(out), str(d / "placed.c")], check=True)
    return str(out)


def _as_int(v) -> int:
    return int(v, 0) if isinstance(v, str) else v


@pytest.mark.parametrize("backend", ["bpf", "tracefs"])
def test_sym_plus_offset_lands_exactly_there_and_the_process_survives(target, backend):
    x, calls = 40_000 + os.getpid() % 1000, 3
    proc = subprocess.Popen([target, str(x), str(calls)], stdin=subprocess.PIPE, text=True)
    with Tool("probe", "--json", "--backend", backend, "-p", str(proc.pid),
              f"p:{target}:placed+10 magic=%r11:x64 x=%di:s64",
              f"p:{target}:placed+0xd copy=%r10:s64 x=%di:s64") as tool:
        proc.communicate("go\n", timeout=60)
        settle(0.6)
    assert proc.returncode == 0, f"the traced process was harmed: {proc.returncode}"
    events = [e for e in tool.json() if e["pid"] == proc.pid]
    at10 = [e["args"] for e in events if e["probe"] == "placed_10"]
    at13 = [e["args"] for e in events if e["probe"] == "placed_13"]
    # after the movabs, before the mov: r11 holds MAGIC; after the mov: r10 == rdi
    assert [(_as_int(a["magic"]), a["x"]) for a in at10] == [(MAGIC, x + i) for i in range(calls)], \
        (tool.lines, tool.stderr)
    assert at13 == [{"copy": x + i, "x": x + i} for i in range(calls)], tool.stderr
    meta = tool.json("meta")[0]
    if backend == "tracefs":
        real = os.path.realpath(target)
        assert [ln.split()[1] for ln in meta["events"]] == \
            [f"{real}:{off:#x}" for off in _file_offsets(target, 10, 13)]


def _file_offsets(path: str, *offsets: int) -> list[int]:
    """Through readelf (binutils), not through bpfprobes: where placed+OFFS is in the file."""
    syms = subprocess.run(["readelf", "-sW", path], capture_output=True, text=True,
                          check=True).stdout
    value = next(int(p[1], 16) for p in map(str.split, syms.splitlines())
                 if len(p) >= 8 and p[7] == "placed")
    loads = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True,
                           check=True).stdout
    for p in map(str.split, loads.splitlines()):
        if p[:1] == ["LOAD"] and int(p[2], 16) <= value < int(p[2], 16) + int(p[4], 16):
            return [value + o - int(p[2], 16) + int(p[1], 16) for o in offsets]
    raise AssertionError("placed is in no LOAD segment")


def _one_error_line(r: subprocess.CompletedProcess, status: int, words: str) -> None:
    assert r.returncode == status, r.stderr
    lines = r.stderr.splitlines()
    assert lines and lines[0].startswith(("bpfprobes probe: error: ",
                                          "bpfprobes count: error: ")), r.stderr
    assert words in lines[0], r.stderr
    assert all(ln.split(": ")[1] in ("error", "hint") for ln in lines), r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("backend", ["bpf", "tracefs"])
def test_inside_an_instruction_is_refused_before_anything_is_attached(target, backend):
    r = run_tool("probe", "--backend", backend, "-d", "5", f"p:{target}:placed+5")
    _one_error_line(r, 2, "placed+0x5 in ")
    assert "inside an instruction" in r.stderr and "--force" in r.stderr
    assert target not in dynamic_events()


def test_force_says_so_on_stderr(target):
    r = run_tool("probe", "--dry-run", "--force", f"p:{target}:placed+5")
    assert r.returncode == 0, r.stderr
    assert "bpfprobes probe: warning: placed+0x5 in " in r.stderr
    assert "probing there anyway (--force)" in r.stderr


@pytest.mark.parametrize("args, status, words", [
    (["probe", "p:/dev/zero:0x10"], 1, "/dev/zero is a character device"),
    (["probe", "--backend", "tracefs", "p:/dev/zero:main"], 1, "/dev/zero is a character device"),
    (["count", "p:/dev/zero:*"], 1, "/dev/zero is a character device"),
    (["probe", "p:/tmp:main"], 1, "/tmp is a directory"),
    (["probe", "p:/tmp/\udcff:main"], 2, "not valid UTF-8"),
    (["probe", "p:/tmp/b\u00e0sh:main"], 2, "the kernel would read as a space"),
    (["probe", "p:/tmp/a\x1b]0;x\x07:main"], 2, "control, format or space"),
])
def test_odd_targets_are_one_line(args, status, words):
    r = run_tool(*args, timeout=30)
    _one_error_line(r, status, words)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = run_tool("probe", f"p:{fifo}:main", timeout=30)       # no writer: an open would hang
    _one_error_line(r, 1, f"{fifo} is a FIFO")
    r = run_tool("count", f"p:{fifo}:*", timeout=30)
    _one_error_line(r, 1, f"{fifo} is a FIFO")
    assert Path(fifo).exists()


def test_with_a_pid_the_process_must_see_the_file_that_was_checked(target, tmp_path):
    """With -p, BCC opens the binary as /proc/PID/root/PATH: in another mount
    namespace that can be another file, which was never checked: refused."""
    other = tmp_path / "other"
    other.write_bytes(Path(target).read_bytes())          # same bytes, another inode
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             f"mount --bind {other} {target} && echo ready && exec sleep 30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        r = run_tool("probe", "--dry-run", "-p", str(proc.pid), f"p:{target}:placed")
        _one_error_line(r, 1, f"process {proc.pid} sees another file at {target}")
        r = run_tool("probe", "--dry-run", "-p", str(os.getpid()), f"p:{target}:placed")
        assert r.returncode == 0, r.stderr
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- the checked file is the probed file

# Loaded into the tool's own process (PYTHONPATH): swaps a directory of the target's
# path for a symlink to another directory right before the first attach, i.e. after
# every check. That is the reviewer's race (issue 11, F1) with no timing luck.
SWAP_HOOK = """
import os
from bpfprobes.backends.bpf import loader, progcache
from bpfprobes.backends.tracefs import dynevents

def _swapping(orig):
    def call(*args, **kwargs):
        d = os.environ.pop("BPFP_TEST_SWAP_DIR", None)
        if d is not None:
            os.rename(d, d + ".old")
            os.symlink(os.environ["BPFP_TEST_SWAP_TO"], d)
        return orig(*args, **kwargs)
    return call

dynevents.Session.add = _swapping(dynevents.Session.add)
loader.Loaded.attach = _swapping(loader.Loaded.attach)
progcache.DirectLoaded.attach = _swapping(progcache.DirectLoaded.attach)   # a cached program
"""


@pytest.mark.parametrize("tool", ["bpf", "tracefs", "count"])
def test_a_directory_swapped_after_the_check_does_not_redirect_the_probe(target, tool,
                                                                         tmp_path):
    """The probe lands in the inode that was checked (held open, /proc/self/fd/N),
    not in whatever the path names at attach time: the process running the checked
    file is traced, the one running the file the path now leads to is not."""
    checked, other = tmp_path / "d", tmp_path / "other"
    for d in (checked, other):               # same bytes, two inodes: nothing can crash
        d.mkdir()
        shutil.copy(target, d / "prog")
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SWAP_HOOK)
    env = {"PYTHONPATH": f"{tmp_path / 'hook'}:{ROOT}", "BPFP_TEST_SWAP_DIR": str(checked),
           "BPFP_TEST_SWAP_TO": str(other)}
    args = ["count", "--json", f"p:{checked}/prog:placed"] if tool == "count" else \
        ["probe", "--json", "--backend", tool, f"p:{checked}/prog:placed+10 magic=%r11:x64"]
    x, calls = 50_000 + os.getpid() % 1000, 3
    if tool == "count":
        args[2:2] = ["--by", "pid"]
    with Tool(*args, env=env) as tool_run:
        assert (checked.is_symlink() and os.readlink(checked) == str(other)), \
            f"the hook did not swap the directory: {tool_run.stderr}"
        runs = {name: subprocess.Popen([str(path / "prog"), str(x), str(calls)],
                                       stdin=subprocess.PIPE, text=True)
                for name, path in (("checked", tmp_path / "d.old"), ("other", other))}
        for proc in runs.values():
            proc.communicate("go\n", timeout=60)
        settle(0.6)
    assert {n: p.returncode for n, p in runs.items()} == {"checked": 0, "other": 0}
    pids = {n: p.pid for n, p in runs.items()}
    if tool == "count":
        [table] = tool_run.json("totals")
        got = {r["pid"]: r["count"] for r in table["rows"]}
        assert got.get(pids["checked"]) == calls and pids["other"] not in got, (got, pids)
        return
    events = tool_run.json()
    seen = {n: [(_as_int(e["args"]["magic"])) for e in events if e["pid"] == pid]
            for n, pid in pids.items()}
    assert seen == {"checked": [MAGIC] * calls, "other": []}, tool_run.stderr
    meta = tool_run.json("meta")[0]
    shown = meta["events"] if tool == "tracefs" else meta["attach"]
    assert shown and all(f"{checked}/prog:0x" in w and "/proc/self/fd" not in w
                         for w in shown), shown        # users see the real path

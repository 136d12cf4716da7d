"""Nothing the user types becomes code (issue 11, section 2), with the real BCC.

tests/unit/test_injection.py reads the generated C; here BCC compiles the same
corpus (one program per hostile shape) and the loaded module itself says which
functions it holds, and that nothing was auto-attached when it was built (BCC
attaches kprobe__*, tracepoint__*, ... functions by itself). A control shows
that the check sees the program the issue reported, and the tool runs on a
real binary at that very path. Then section 7's filter texts, through the CLI.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bpfprobes.backends.bpf import loader
from bpfprobes.gen import probegen
from bpfprobes.gen.codegen import Program
from bpfprobes.kernel import headers
from tooling import Tool, held_by, run_tool
from unit.test_injection import CASES, EXPLOIT_PATH, X86, plan_of

# What BCC fills when it attaches at construction (BPF._trace_autoload)
AUTO_ATTACH_TABLES = ("kprobe_fds", "uprobe_fds", "tracepoint_fds", "raw_tracepoint_fds",
                      "kfunc_entry_fds", "kfunc_exit_fds", "lsm_fds")


@pytest.fixture(scope="module")
def kernel_headers():
    if os.uname().machine != "x86_64":
        pytest.fail("the corpus names x86_64 registers (%di, %si): run the host tier on x86_64")
    h = headers.find()
    assert h.status != "none", h.source
    return h


def functions_of(loaded: loader.Loaded) -> set[str]:
    """The module's functions as libbcc lists them (what BPF() may load)."""
    import bcc  # noqa: PLC0415 - the host tier has BCC (conftest checks)
    lib, module = bcc.lib, loaded.bpf.module
    return {lib.bpf_function_name(module, i).decode() for i in range(lib.bpf_num_functions(module))}


def auto_attached(loaded: loader.Loaded) -> dict:
    bpf = loaded.bpf
    return {t: list(getattr(bpf, t)) for t in AUTO_ATTACH_TABLES if getattr(bpf, t, None)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_compiled_corpus_holds_exactly_the_asked_functions(case, kernel_headers):
    program = probegen.probe_program(plan_of(case), X86)
    with loader.compile_program(program, kernel_headers) as loaded:
        assert functions_of(loaded) == case.expected
        assert auto_attached(loaded) == {}
        assert loaded.attached == []


def test_control_the_old_comment_is_seen(kernel_headers):
    """The program as the old codegen wrote it for the issue's path: BCC finds the
    extra function and attaches it at construction; the checks above would fail."""
    case = CASES[0]
    program = probegen.probe_program(plan_of(case), X86)
    old = program.text.replace("/* spec 0 */", f"/* p:{EXPLOIT_PATH}:main */", 1)
    assert old != program.text
    with loader.compile_program(Program(program.name, old, program.cflags),
                                kernel_headers) as loaded:
        extra = functions_of(loaded) - case.expected
        assert extra == {"tracepoint__syscalls__sys_enter_getppid"}
        assert list(auto_attached(loaded)) == ["tracepoint_fds"]


def _prog_names(ids) -> set[str]:
    names = set()
    for i in ids:
        out = subprocess.run(["bpftool", "prog", "show", "id", str(i), "--json"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            names.add(json.loads(out.stdout)["name"])
    return names


def test_the_issues_path_runs_as_one_probe(tmp_path):
    """A real binary at the issue's path, probed by the tool: the run holds one
    program, probe_0, and its event comes from that binary."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the target (make setup-test installs it)")
    binary = Path(str(tmp_path) + EXPLOIT_PATH.removeprefix("/tmp"))
    binary.parent.mkdir(parents=True)
    src = tmp_path / "target.c"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(src)], check=True)
    with Tool("probe", "--json", "-d", "60", f"p:{binary}:main") as tool:
        assert _prog_names(held_by(tool.proc.pid).progs) == {"probe_0"}, tool.stderr
        run = subprocess.Popen([str(binary)])
        assert run.wait() == 0
        mine = lambda: [e for e in tool.json() if e["pid"] == run.pid]  # noqa: E731
        assert tool.wait_until(mine), tool.stderr
    (event,) = mine()
    assert event["comm"] == "*"                 # the binary's name, the path's last part


# ---------------------------------------------------------------- section 7: hostile filter text

@pytest.mark.parametrize("text, fragment", [
    ("pid == 012", "ambiguous number '012'"),
    ("pid == " + "1" * 5000, "does not fit in 64 bits"),
    ("(" * 1200 + "pid == 1" + ")" * 1200, "more than 32 deep"),
    ('comm == "\udcff\udcfe"', "not valid UTF-8"),       # argv bytes ff fe
], ids=["octal", "5000-digits", "1200-deep", "not-utf8"])
def test_hostile_filter_is_one_line_and_exit_2(text, fragment):
    r = run_tool("probe", "-d", "5", "t:syscalls:sys_enter_getppid", "--filter", text,
                 timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert lines[0].startswith("bpfprobes probe: error: ") and fragment in lines[0], lines
    assert len(lines) <= 2 and all(ln.startswith("bpfprobes probe: ") for ln in lines), lines
    assert r.stdout == "" and not r.held             # refused before anything was loaded

"""USDT probes (u:BINARY:[PROVIDER:]NAME) on this kernel, against what the test
caused: tests/host/usdt_target.c built with <sys/sdt.h> (arguments in registers at
-O2, in memory at -O0, a constant, a string; a probe with two sites; a probe
fired only while its semaphore is raised), and Debian's own python3.11, whose
notes ship with it (gc__start, behind a semaphore)."""
from __future__ import annotations

import os
import subprocess

import pytest

from tooling import Tool, build_probe_target, run_tool, unique

N = 400
PYTHON = "/usr/bin/python3.11"


@pytest.fixture(scope="module", params=["-O2", "-O0"])
def usdt_bin(request, tmp_path_factory) -> str:
    if not os.path.exists("/usr/include/x86_64-linux-gnu/sys/sdt.h") and \
            not os.path.exists("/usr/include/sys/sdt.h"):
        pytest.fail("<sys/sdt.h> is missing: `make setup-test` installs systemtap-sdt-dev")
    return build_probe_target(tmp_path_factory.mktemp("usdt"), request.param,
                              name="usdt_target")


def traced(argv: list[str], *tool: str) -> tuple[Tool, str]:
    """`argv` run under the tool (`-p` its pid), told to go once the tool is live:
    (the stopped tool, the process's output)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with Tool(tool[0], "--json", "-p", str(proc.pid), *tool[1:]) as t:
            out, _ = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    return t, out


def run_target(binary: str, tag: str, *specs: str) -> tuple[Tool, int]:
    """The probe tool on `specs`, the target run once under it: (tool, times the
    target saw the `guarded` semaphore raised)."""
    t, out = traced([binary, str(N), tag], "probe", *specs)
    return t, int(out)


def test_arguments_of_every_firing(usdt_bin):
    tag = unique("tag")
    t, _ = run_target(usdt_bin, tag,
                      f"u:{usdt_bin}:bpfp:tick i=$arg1 neg=$arg2 tag=+0($arg3):string c=$arg4")
    events = t.json()
    assert [e["args"]["i"] for e in events] == list(range(N))
    assert all(e["args"] == {"i": e["args"]["i"], "neg": -e["args"]["i"], "tag": tag, "c": 42}
               for e in events), events[:3]
    assert {e["probe"] for e in events} == {"tick"}
    assert {e["comm"] for e in events} == {"usdt_target"}


def test_both_sites_of_a_probe_and_its_default_arguments(usdt_bin):
    t, _ = run_target(usdt_bin, "x", f"u:{usdt_bin}:twice")
    got = sorted(e["args"]["arg1"] for e in t.json())
    # first(i) fires it with i, second(i) with 2i: two sites, one event name
    assert got == sorted([*range(N), *(2 * i for i in range(N))])
    assert {e["probe"] for e in t.json()} == {"twice"}


def test_a_semaphore_is_raised_while_attached_and_only_then(usdt_bin):
    t, raised = run_target(usdt_bin, "x", f"u:{usdt_bin}:bpfp:guarded")
    assert raised == N and len(t.json()) == N
    proc = subprocess.run([usdt_bin, str(N), "x"], input="go\n", capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == "0"          # detached: lowered again


def test_count_counts_each_probe_over_its_sites(usdt_bin):
    t, _ = traced([usdt_bin, str(N), "x"], "count", f"u:{usdt_bin}:bpfp:*")
    rows = {r["target"]: r["count"] for r in t.json("totals")[-1]["rows"]}
    # PATH:PROVIDER:NAME, as p: rows are PATH:FUNC: another binary's probes stay apart
    assert rows == {f"{usdt_bin}:bpfp:tick": N, f"{usdt_bin}:bpfp:twice": 2 * N,
                    f"{usdt_bin}:bpfp:guarded": N}, rows


def test_pythons_own_notes(tmp_path):
    """Debian's python3.11 ships USDT notes; gc__start has a semaphore and its
    argument (the generation) in memory (-4@112(%rsp))."""
    if not os.path.exists(PYTHON):
        pytest.fail(f"{PYTHON} is missing")
    # os._exit: the interpreter's own collections at shutdown are not the test's
    script = ("import gc, os, sys\ngc.disable()\nsys.stdin.readline()\n"
              "for _ in range(7): gc.collect(2)\nfor _ in range(5): gc.collect(1)\n"
              "os._exit(0)\n")
    t, _ = traced([PYTHON, "-c", script], "probe", f"u:{PYTHON}:python:gc__start")
    gens = sorted(e["args"]["arg1"] for e in t.json())
    assert gens == [1] * 5 + [2] * 7, gens


@pytest.mark.parametrize("spec, message", [
    ("u:{bin}:nosuch", "no USDT probe nosuch"),
    ("u:{bin}:tick x=$arg5", "has 4 arguments"),
    ("u:{bin}", "bad USDT probe"),
    ("u:{bin}:other:tick", "no USDT probe other:tick"),
    ("u:/etc/passwd:tick", "not an ELF file"),
    ("u:{bin}:tick x=$arg13", "at most 12 arguments"),
])
def test_bad_usdt_specs_are_one_line(usdt_bin, spec, message):
    r = run_tool("probe", spec.format(bin=usdt_bin))
    assert r.returncode in (1, 2) and message in r.stderr and "Traceback" not in r.stderr, r
    assert not r.held.progs


def test_tracefs_refuses_usdt(usdt_bin):
    r = run_tool("probe", "--backend", "tracefs", f"u:{usdt_bin}:tick")
    assert r.returncode == 2 and "USDT" in r.stderr and not r.held.progs, r


def test_a_site_that_is_not_sdts_nop_is_refused(usdt_bin, tmp_path):
    """A crafted note: the site moved into the middle of another instruction."""
    from bpfprobes.kernel import usdtnotes
    from bpfprobes.kernel.elfsym import Elf
    with Elf(usdt_bin) as elf:
        notes = elf.named_sections[".note.stapsdt"]
        site = next(s for s in usdtnotes.sites(elf) if s.name == "guarded")
        pc = elf.offset_to_vaddr(site.file_offset)
    data = bytearray(open(usdt_bin, "rb").read())
    at = data.find(pc.to_bytes(8, "little"), notes[2], notes[2] + notes[3])
    assert at > 0
    data[at:at + 8] = (pc + 2).to_bytes(8, "little")
    bad = tmp_path / "crafted"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    for tool in (["probe", f"u:{bad}:bpfp:guarded"], ["count", f"u:{bad}:bpfp:guarded"]):
        r = run_tool(*tool)
        assert r.returncode in (1, 2) and "not the nop" in r.stderr, r
        assert "Traceback" not in r.stderr and not r.held.progs, r


def test_a_semaphore_outside_the_file_is_refused(tmp_path):
    """Semaphores in .bss (not sdt.h's .probes section): the kernel cannot raise one
    that is not in the file, so the probe would never fire; said, not attached."""
    src = open(os.path.join(os.path.dirname(__file__), "usdt_target.c")).read()
    src = src.replace('__attribute__((section(".probes"), used))', "__attribute__((used))")
    (tmp_path / "bss.c").write_text(src)
    out = tmp_path / "bss"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(tmp_path / "bss.c")], check=True)
    r = run_tool("probe", f"u:{out}:bpfp:guarded")
    assert r.returncode == 1 and "not in the file" in r.stderr and not r.held.progs, r

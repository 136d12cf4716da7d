"""Runs the kernel skipped are counted lost: a tracepoint program does not run
while another BPF program runs on that CPU, and the kernel counts each skip in
bpf_prog_info.recursion_misses. The tools add those of their own programs to
`lost` and give them alone as the summary's `recursion_misses`."""
from __future__ import annotations

import json
import os
import struct
import subprocess

from bpfprobes.backends.bpf import perfring
from tooling import Tool, held_by, run_tool

BPF_PROG_GET_FD_BY_ID = 13


def summary_of(stdout: str) -> dict:
    return [json.loads(l) for l in stdout.splitlines() if '"summary"' in l][-1]


def bpftool_misses(prog_id: int) -> int:
    out = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out).get("recursion_misses", 0)


def test_summary_has_recursion_misses() -> None:
    r = run_tool("opensnoop", "--json", "-d", "1")
    assert r.returncode == 0, r.stderr
    s = summary_of(r.stdout)
    assert type(s["recursion_misses"]) is int and s["recursion_misses"] >= 0
    assert s["lost"] >= s["recursion_misses"]        # misses are part of lost
    assert r.held.progs                               # it did load programs


def test_prog_info_agrees_with_bpftool() -> None:
    """Our reading of a tool's own programs (by id, whatever else is loaded)
    against bpftool's, read before and after ours: misses only grow."""
    with Tool("opensnoop", "--json") as t:
        progs = held_by(t.proc.pid).progs
        assert progs
        seen = 0
        for prog_id in progs:
            fd = perfring.bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<I", prog_id))
            try:
                before = bpftool_misses(prog_id)
                info = perfring.prog_info(fd)
                after = bpftool_misses(prog_id)
            finally:
                os.close(fd)
            assert info["id"] == prog_id
            assert before <= info["recursion_misses"] <= after
            seen += before
        t.stop()
    s = t.json("summary")[0]
    assert s["recursion_misses"] >= seen
    assert s["lost"] >= s["recursion_misses"]

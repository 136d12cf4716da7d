"""Which tracepoint path opensnoop's plan takes on which kernel: the exit-only
syscalls:sys_exit_open* programs where the arch keeps the arguments in the saved
registers, BTF is there and the kernel has bpf_task_pt_regs; raw_syscalls:sys_exit
where it lacks the helper; the entry/exit pairs where neither can be used. (The
host tier runs all three on the real kernel: tests/host/test_opensnoop.py.)"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from bpfprobes.kernel import arch, btf
from bpfprobes.tools import opensnoop


def kernel(abi=arch.X86_64, helper=True, tracepoints=True, offsets=True):
    return SimpleNamespace(
        abi=abi,
        in_image=lambda name: helper and name == "bpf_task_pt_regs",
        tracepoint_exists=lambda cat, ev: tracepoints,
        struct_offset=lambda s, m: 8 if offsets else None)


@pytest.fixture
def with_btf(monkeypatch, tmp_path):
    def set_to(present: bool):
        path = tmp_path / "vmlinux"
        if present:
            path.write_bytes(b"x")
        monkeypatch.setattr(btf, "VMLINUX", path)
    return set_to


def test_exit_only_path_where_the_helper_and_btf_are(with_btf):
    with_btf(True)
    defs = opensnoop._syscall_exit_defs(kernel())
    assert defs["ATTACH_SYSCALL_EXIT"] and defs["SYSCALL_ARG2"] == "si"


@pytest.mark.parametrize("why", ["no helper", "no btf", "arch"])
def test_no_exit_only_path(with_btf, why):
    with_btf(why != "no btf")
    k = kernel(helper=why != "no helper",
               abi=replace(arch.X86_64, args_kept_at_exit=False) if why == "arch" else arch.X86_64)
    assert opensnoop._syscall_exit_defs(k) is None


def test_raw_path_needs_the_arch_table_the_tracepoint_and_btf_offsets():
    assert opensnoop._raw_syscalls_defs(kernel())["ATTACH_RAW_SYSCALLS"]
    assert opensnoop._raw_syscalls_defs(kernel(tracepoints=False)) is None
    assert opensnoop._raw_syscalls_defs(kernel(offsets=False)) is None
    assert opensnoop._raw_syscalls_defs(kernel(abi=arch.AARCH64)) is None


def test_only_x86_64_reads_arguments_at_exit_so_far():
    assert arch.X86_64.args_kept_at_exit and not arch.AARCH64.args_kept_at_exit

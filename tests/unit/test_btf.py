"""The BTF reader on a blob built here (any machine), and on the real kernel's when readable."""
import struct
from pathlib import Path

import pytest

from bpfprobes.kernel import btf


class Builder:
    def __init__(self):
        self.strs = b"\0"
        self.types = b""

    def s(self, text):
        if not text:
            return 0
        off = len(self.strs)
        self.strs += text.encode() + b"\0"
        return off

    def t(self, name, kind, vlen, size_or_type, extra=b"", kflag=0):
        self.types += struct.pack("<III", self.s(name), (kflag << 31) | (kind << 24) | vlen,
                                  size_or_type) + extra

    def blob(self):
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types),
                          len(self.strs))
        return hdr + self.types + self.strs


def kernel_like() -> btf.Btf:
    b = Builder()
    b.t("int", btf.INT, 0, 4, struct.pack("<I", (1 << 24) | 32))            # 1 signed int
    b.t("char", btf.INT, 0, 1, struct.pack("<I", (1 << 24) | 8))            # 2
    b.t("", btf.PTR, 0, 2)                                                  # 3 char *
    b.t("", btf.CONST, 0, 2)                                                # 4 const char
    b.t("", btf.PTR, 0, 4)                                                  # 5 const char *
    members = struct.pack("<III", b.s("tgid"), 1, 0) + \
        struct.pack("<III", b.s(""), 10, 64) + \
        struct.pack("<III", b.s("real_parent"), 7, 128)
    b.t("task_struct", btf.STRUCT, 3, 24, members)                          # 6
    b.t("", btf.PTR, 0, 6)                                                  # 7
    params = struct.pack("<II", b.s("dfd"), 1) + struct.pack("<II", b.s("filename"), 5)
    b.t("", btf.FUNC_PROTO, 2, 1, params)                                   # 8
    b.t("do_sys_openat2", btf.FUNC, 0, 8)                                   # 9
    inner = struct.pack("<III", b.s("pid"), 1, 0) + struct.pack("<III", b.s("flags"), 1, 32)
    b.t("", btf.UNION, 2, 8, inner)                                         # 10 anonymous
    return btf.Btf(b.blob())


def test_member_offsets_including_anonymous_members():
    t = kernel_like()
    assert t.member_offset("task_struct", "tgid") == 0
    assert t.member_offset("task_struct", "real_parent") == 16
    assert t.member_offset("task_struct", "flags") == 12     # inside the anonymous union at 8
    with pytest.raises(btf.BtfError):
        t.member_offset("task_struct", "nope")
    with pytest.raises(btf.BtfError):
        t.member_offset("no_such_struct", "tgid")


def test_function_parameters():
    dfd, filename = kernel_like().func_params("do_sys_openat2")
    assert (dfd.name, dfd.index, dfd.c_type, dfd.size, dfd.signed) == ("dfd", 1, "int", 4, True)
    assert (filename.name, filename.index, filename.c_type) == ("filename", 2, "const char *")
    assert filename.is_char_pointer and not dfd.is_char_pointer


def test_bad_magic():
    with pytest.raises(btf.BtfError):
        btf.Btf(b"\0" * 32)


@pytest.mark.skipif(not btf.VMLINUX.exists(), reason="no kernel BTF on this machine (unit tier "
                    "runs anywhere; the host tier asserts BTF where the kernel has it)")
def test_real_kernel_btf():
    t = btf.Btf.load()
    assert 0 < t.member_offset("task_struct", "real_parent") < 8192
    names = [p.name for p in t.func_params("do_sys_openat2")]
    assert names[:2] == ["dfd", "filename"]

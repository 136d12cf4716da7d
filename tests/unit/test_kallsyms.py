from bpfprobes.kernel.kallsyms import Kallsyms

TEXT = b"""\
ffffffff81000000 T _stext
ffffffff81001000 t do_sys_openat2
ffffffff81001200 T __x64_sys_openat
ffffffff81001300 T __x64_sys_openat2
ffffffff81002000 D some_data
ffffffff81003000 W vfs_read
ffffffff81003100 T vfs_write
ffffffffc0001000 t e1000_intr\t[e1000]
ffffffffc0002000 t virtblk_done\t[virtio_blk]
"""


def test_find_kernel_and_module_symbols():
    k = Kallsyms(text=TEXT)
    [s] = k.find("do_sys_openat2")
    assert (s.addr, s.module, s.kind) == (0xffffffff81001000, None, "t")
    [m] = k.find("e1000_intr")
    assert m.module == "e1000"
    assert k.exists("e1000_intr", module="e1000")
    assert not k.exists("e1000_intr", module="virtio_blk")


def test_data_symbols_and_prefix_matches_are_not_functions():
    k = Kallsyms(text=TEXT)
    assert not k.exists("some_data")
    assert not k.exists("__x64_sys_open")          # only a prefix of real names
    assert not k.exists("sys_openat")               # only a suffix


def test_wildcards():
    k = Kallsyms(text=TEXT)
    assert k.match("vfs_*") == ["vfs_read", "vfs_write"]
    assert k.match("__x64_sys_openat?") == ["__x64_sys_openat2"]
    assert k.first_existing(["nope", "__x64_sys_openat"]) == "__x64_sys_openat"


def test_resolve_address():
    k = Kallsyms(text=TEXT)
    assert k.format(0xffffffff81001205) == "__x64_sys_openat+0x5"
    assert k.format(0xffffffffc0002010) == "virtblk_done+0x10 [virtio_blk]"
    assert k.format(0x10) == "0x10"
    assert k.addresses_visible()
    assert not Kallsyms(text=b"0000000000000000 T _stext\n").addresses_visible()

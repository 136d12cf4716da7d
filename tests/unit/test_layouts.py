"""Each event struct is defined once in C (bpf_c/*.h) and mirrored once in decode.py:
compile the real header with gcc and compare every size and offset."""
import shutil
import subprocess

import pytest

from bpfprobes.base import cstruct
from bpfprobes.gen import codegen
from bpfprobes.plan import runconfig
from bpfprobes.present import decode

# every event and every config struct mirrored in Python
LAYOUTS = [v for m in (decode, runconfig) for v in vars(m).values() if isinstance(v, cstruct.Layout)]
HEADER_OF = {"open_event": "opensnoop.h"}

PRELUDE = """
#include <stdio.h>
#include <stddef.h>
typedef unsigned char u8; typedef unsigned short u16; typedef unsigned int u32;
typedef unsigned long long u64; typedef signed char s8; typedef short s16; typedef int s32;
typedef long long s64;
"""


def header_for(layout: cstruct.Layout) -> str:
    """The .h that defines `struct <c_name>` (searched, so new layouts need no table entry)."""
    for h in sorted(codegen.c_dir().glob("*.h")):
        if f"struct {layout.c_name} {{" in h.read_text():
            return h.name
    raise AssertionError(f"no bpf_c header defines struct {layout.c_name}")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: l.c_name)
def test_python_mirror_matches_c(layout, tmp_path):
    fields = [n for n, _ in layout.fields] + ([layout.tail[0]] if layout.tail else [])
    body = "".join(f'printf("{f} %zu\\n", offsetof(struct {layout.c_name}, {f}));' for f in fields)
    src = tmp_path / "sizes.c"
    src.write_text(PRELUDE + f'#include "{header_for(layout)}"\n'
                   f'int main(void) {{ printf("sizeof %zu\\n", sizeof(struct {layout.c_name})); '
                   f'{body} return 0; }}\n')
    exe = tmp_path / "sizes"
    subprocess.run(["gcc", "-I", str(codegen.c_dir()), "-o", str(exe), str(src)], check=True)
    c = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                     check=True).stdout.splitlines())
    import ctypes
    assert int(c["sizeof"]) == ctypes.sizeof(layout.ctype)
    for f in fields:
        assert int(c[f]) == getattr(layout.ctype, f).offset, f
    assert layout.head.size == (getattr(layout.ctype, layout.tail[0]).offset if layout.tail
                                else ctypes.sizeof(layout.ctype))


def test_unpack_golden_bytes():
    import struct
    raw = struct.pack("<QIIIiQIHHI16s", 123, 10, 11, 1000, -2, 0o101, 0o640, 1, 0, 6,
                      b"cat\0") + b"/etc/\0"
    e = decode.open_event(raw)
    assert (e["ts_ns"], e["pid"], e["tid"], e["uid"], e["ret"]) == (123, 10, 11, 1000, -2)
    assert (e["flags"], e["mode"], e["syscall"], e["truncated"]) == (0o101, 0o640, "openat", False)
    assert (e["comm"], e["path"]) == ("cat", "/etc/")


def test_non_utf8_paths_are_kept_exactly_not_fatal():
    # surrogateescape: the exact bytes for JSON; safetext.for_terminal shows \xe9
    assert decode.cstr(b"caf\xe9\0junk") == "caf\udce9"
    assert decode.cstr("é ü".encode() + b"\0") == "é ü"


# ---- golden bytes: each layout read from (or written to) bytes spelled out by hand

def test_exec_event_golden_bytes():
    import struct
    head = struct.pack("<QIIIIiHHHHI16s", 7, 100, 101, 1, 1000, -2, 1, 4 | 1, 2, 0, 11,
                       b"sh\0")
    args = b"\x03\x00ls\0" + b"\x04\x80abc\0"          # "ls", then "abc" marked cut
    e = decode.exec_event(head + args)
    assert (e["pid"], e["tid"], e["ppid"], e["uid"], e["ret"]) == (100, 101, 1, 1000, -2)
    assert e["syscall"] == "execveat" and e["comm"] == "sh"
    assert e["argv"] == ["ls", "abc"] and e["cut"] == [1]
    assert e["truncation"] == ["max-args", "arg-cut"]


def test_irq_event_golden_bytes():
    import struct
    raw = struct.pack("<QQQiiIIiB3sIIBBH16s", 10, 2500, 0xffffffff81000000, 38, 1, 0, 0,
                      -1, 0, b"\0\0\0", 1, 0x10000, 2, 4, 0, b"swapper/1\0") + b"\0" * 4
    e = decode.irq_event(raw)
    assert (e["ts_ns"], e["duration_ns"], e["irq"], e["ret"], e["kind"]) == \
        (10, 2500, 38, 1, "hardirq")
    assert e["cpu"] == 1 and e["ctx"]["preempt"] == 0x10000 and e["comm"] == "swapper/1"


def test_metric_key_golden_bytes():
    import struct
    row = decode.METRIC_KEY.unpack(struct.pack("<IIiI16s4Q", 3, 4242, -1, 0, b"nginx\0",
                                               7, 0, 0, 2**64 - 1))
    assert (row["probe"], row["pid"], row["err"], decode.cstr(row["comm"])) == \
        (3, 4242, -1, "nginx")
    assert struct.unpack("<4Q", row["args"]) == (7, 0, 0, 2**64 - 1)


def test_config_golden_bytes():
    """The bytes a program's config map gets: run fields first, each tool's after."""
    import struct
    rate = runconfig.RateLimit(500, True)
    raw = runconfig.pack(runconfig.OPENSNOOP, {
        **runconfig.task(skip_pid=10, pid=20, cgroup=7, rate=rate),
        "flags": 0o1, "rdonly": 1, "failed_only": 1})
    assert raw == struct.pack("<IIIIQQII QII", 10, 20, 0, runconfig.ANY_UID, 7, 500, 1, 0,
                              0o1, 1, 1)
    irq = runconfig.pack(runconfig.IRQ, {"softirq_mask": 0x8, "irq_filter": 1,
                                         "irqs": [37, 38] + [0x7FFFFFFF] * 14})
    assert irq[40:] == struct.pack("<II16i", 0x8, 1, 37, 38, *[0x7FFFFFFF] * 14)
    probe = runconfig.pack(runconfig.PROBE, {"comm": b"cat", "comm_len": 3, "comm_set": 1})
    assert probe[40:] == b"cat" + b"\0" * 13 + struct.pack("<II", 3, 1)


@pytest.mark.parametrize("bad", [{"pid": -1}, {"pid": 2**32}, {"rate_limit": 2**64},
                                 {"pid": "1"}, {"flags": 1.5}])
def test_config_values_that_do_not_fit_are_refused_not_cut(bad):
    with pytest.raises(ValueError):
        runconfig.pack(runconfig.OPENSNOOP, bad)


def test_a_config_without_a_user_filter_lets_every_user_through():
    """uid 0 is root: "no filter" must be ANY_UID, also when a tool passes uid=None."""
    for layout in (runconfig.OPENSNOOP, runconfig.EXECSNOOP, runconfig.PROBE,
                   runconfig.COUNT, runconfig.IRQ):
        c = layout.ctype.from_buffer_copy(runconfig.pack(layout, runconfig.task()))
        assert c.uid == runconfig.ANY_UID, layout.c_name


@pytest.mark.parametrize("layout, bad", [
    (runconfig.IRQ, {"irqs": [2**32 + 5] + [0] * 15}),        # an element cut by ctypes
    (runconfig.IRQ, {"irqs": [1, 2]}),                          # too few slots
    (runconfig.PROBE, {"comm": b"x" * 16}),                     # no room for the NUL
    (runconfig.PROBE, {"comm": "text"})])                       # not bytes
def test_config_arrays_and_strings_are_checked_too(layout, bad):
    with pytest.raises(ValueError):
        runconfig.pack(layout, bad)


def test_dry_run_config_names_the_users_filters_only():
    raw = runconfig.pack(runconfig.PROBE, runconfig.task(skip_pid=4242))
    assert runconfig.describe(runconfig.PROBE, raw) == "(no filters)"
    raw = runconfig.pack(runconfig.PROBE, runconfig.task(skip_pid=4242, pid=7))
    assert runconfig.describe(runconfig.PROBE, raw) == "pid=7"

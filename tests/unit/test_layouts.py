"""Each event struct is defined once in C (bpf_c/*.h) and mirrored once in decode.py:
compile the real header with gcc and compare every size and offset."""
import shutil
import subprocess

import pytest

from bpfprobes import codegen, cstruct, decode, runconfig

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

"""bpf_prog_info parsing (perfring.parse_prog_info): the fields at the kernel's
offsets, and 0 recursion misses from a kernel whose info ends before them."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bpfprobes.backends.bpf import perfring

# A 6.x struct bpf_prog_info (232 bytes) as the kernel fills it: id at 4,
# recursion_misses at 208, and neighbours that must not be taken for them
# (run_time_ns at 192, run_cnt at 200, verified_insns at 216).
GOLDEN = bytearray(232)
struct.pack_into("<I", GOLDEN, 0, 5)                      # type: tracepoint
struct.pack_into("<I", GOLDEN, 4, 0x1234)                 # id
GOLDEN[64:80] = b"tracepoint__sys".ljust(16, b"\0")       # name
struct.pack_into("<QQ", GOLDEN, 192, 111, 222)            # run_time_ns, run_cnt
struct.pack_into("<Q", GOLDEN, 208, 0x0102030405060708)   # recursion_misses
struct.pack_into("<I", GOLDEN, 216, 99)                   # verified_insns


def test_fields_at_their_offsets() -> None:
    info = perfring.parse_prog_info(bytes(GOLDEN), 232)
    assert info == {"id": 0x1234, "recursion_misses": 0x0102030405060708}


@pytest.mark.parametrize("info_len", [0, 40, 192, 208, 215])
def test_info_shorter_than_the_field_reads_zero(info_len: int) -> None:
    # a kernel before 5.12 fills less (5.10: 208 bytes); bytes past info_len are
    # not the kernel's, whatever the buffer holds
    assert perfring.parse_prog_info(bytes(GOLDEN), info_len)["recursion_misses"] == 0


def test_offset_matches_the_uapi_header(tmp_path: Path) -> None:
    headers = [Path("/usr/include/linux/bpf.h"),
               *Path("/usr/src").glob("linux-headers-*/include/uapi/linux/bpf.h")]
    header = next((h for h in headers if "recursion_misses" in h.read_text()), None)
    cc = shutil.which("cc") or shutil.which("gcc")
    if header is None or cc is None:
        pytest.skip("no uapi bpf.h with recursion_misses, or no C compiler")
    src = tmp_path / "off.c"
    src.write_text('#include <stdio.h>\n#include <stddef.h>\n'
                   f'#include "{header}"\n'
                   'int main(void) { printf("%zu %zu %zu\\n", '
                   'offsetof(struct bpf_prog_info, id), '
                   'offsetof(struct bpf_prog_info, recursion_misses), '
                   'sizeof(struct bpf_prog_info)); return 0; }\n')
    exe = tmp_path / "off"
    subprocess.run([cc, "-I/usr/include", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    id_at, misses_at, size = map(int, out.split())
    assert (id_at, misses_at) == (4, perfring._RECURSION_MISSES_AT)
    assert size >= misses_at + 8      # our buffer (_PROG_INFO_SIZE) reaches past it
    assert perfring._PROG_INFO_SIZE >= misses_at + 8


def test_text_summary_names_recursion_misses_only_when_there_are_some():
    import io
    from bpfprobes.present.output import TextOutput
    for misses, said in ((0, False), (3, True)):
        err = io.StringIO()
        TextOutput("t", [], out=io.StringIO(), err=err).summary(
            {"events": 5, "lost": misses, "reason": "duration", "elapsed": 1.0,
             "recursion_misses": misses})
        assert ("recursion_misses 3" in err.getvalue()) is said, err.getvalue()

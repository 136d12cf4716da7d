"""The bpf(2) and perf_event_open(2) calls that feature probes need, via ctypes.

Doctor establishes features by asking the kernel (create this map type, load
this program type) rather than guessing from the version; going through the
syscall directly keeps those probes fast and free of a BCC compile.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

from bpfprobes.kernel import arch

_libc = ctypes.CDLL(None, use_errno=True)

BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD, BPF_OBJ_GET_INFO_BY_FD, \
    BPF_RAW_TRACEPOINT_OPEN, BPF_MAP_FREEZE = 0, 2, 5, 15, 17, 22
MAP_PERF_EVENT_ARRAY, MAP_RINGBUF = 4, 27
PROG_TRACING = 26
ATTACH_TRACE_FENTRY = 24


def _bpf(cmd: int, attr: bytes) -> int:
    """Run bpf(cmd, attr); return the fd, or -errno."""
    buf = ctypes.create_string_buffer(attr, 128)
    ret = _libc.syscall(arch.host().nr_bpf, cmd, buf, 128)
    return ret if ret >= 0 else -ctypes.get_errno()


def _close_ok(fd: int) -> bool:
    if fd >= 0:
        os.close(fd)
        return True
    return False


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    return _bpf(BPF_MAP_CREATE, bytes((ctypes.c_uint32 * 4)(map_type, key_size, value_size,
                                                             max_entries)))


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    """Set one element (BPF_ANY); raises OSError."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    err = _bpf(BPF_MAP_UPDATE_ELEM, struct.pack("<IxxxxQQQ", map_fd, ctypes.addressof(k),
                                                ctypes.addressof(v), 0))
    if err < 0:
        raise OSError(-err, f"bpf map update: {os.strerror(-err)}")


_MAP_INFO = struct.Struct("<IIIIII16s")     # struct bpf_map_info: type .. name


def map_info(map_fd: int) -> dict:
    """A map's definition as the kernel reports it (BPF_OBJ_GET_INFO_BY_FD); raises OSError."""
    info = ctypes.create_string_buffer(128)
    err = _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", map_fd, 128, ctypes.addressof(info)))
    if err < 0:
        raise OSError(-err, f"bpf map info: {os.strerror(-err)}")
    kind, _id, key, value, entries, flags, _name = _MAP_INFO.unpack_from(info.raw)
    return {"type": kind, "key_size": key, "value_size": value, "max_entries": entries,
            "flags": flags}


CONFIG_MAP = "config"       # bpf_c/common.h: every program's run settings


def write_config(map_fd: int, value: bytes) -> None:
    """A program's run settings (runconfig.py) into its one-entry config map,
    before anything is attached. A size that is not the map's is a mirror out
    of step with its C struct: refused, never written short."""
    size = map_info(map_fd)["value_size"]
    if size != len(value):
        raise ValueError(f"config is {len(value)} bytes, the program's map holds {size}")
    map_update(map_fd, b"\0" * 4, value)
    # frozen: nobody rewrites a running tracer's filters through the map (the
    # program cannot either: BPF_F_RDONLY_PROG); kernels before 5.2 have no freeze
    err = _bpf(BPF_MAP_FREEZE, struct.pack("<I", map_fd))
    if err < 0 and err != -errno.EINVAL:
        raise OSError(-err, f"bpf map freeze: {os.strerror(-err)}")


def fentry_load(btf_id: int) -> int:
    """Load `r0 = 0; exit` as an fentry program on the BTF function `btf_id`, then attach it.

    Returns 0 on success, else -errno of the step that failed. Loading alone is
    not proof: some kernels refuse only at attach time.
    """
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)  # mov r0,0 ; exit
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    # union bpf_attr for BPF_PROG_LOAD (offsets from include/uapi/linux/bpf.h)
    ctypes.c_uint32.from_buffer(attr, 0).value = PROG_TRACING
    ctypes.c_uint32.from_buffer(attr, 4).value = 2
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(insns)
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(license_)
    ctypes.c_uint32.from_buffer(attr, 68).value = ATTACH_TRACE_FENTRY   # expected_attach_type
    ctypes.c_uint32.from_buffer(attr, 108).value = btf_id               # attach_btf_id
    prog = _bpf(BPF_PROG_LOAD, bytes(attr))
    if prog < 0:
        return prog
    try:
        open_attr = bytearray(16)
        ctypes.c_uint32.from_buffer(open_attr, 8).value = prog             # raw_tracepoint.prog_fd
        link = _bpf(BPF_RAW_TRACEPOINT_OPEN, bytes(open_attr))
        _close_ok(link)
        return 0 if link >= 0 else link
    finally:
        os.close(prog)

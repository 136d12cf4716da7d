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
    BPF_RAW_TRACEPOINT_OPEN, BPF_MAP_FREEZE, BPF_LINK_CREATE = 0, 2, 5, 15, 17, 22, 28
MAP_PERF_EVENT_ARRAY, MAP_RINGBUF = 4, 27
PROG_KPROBE, PROG_TRACING = 2, 26
ATTACH_TRACE_FENTRY, ATTACH_PERF_EVENT, ATTACH_KPROBE_MULTI = 24, 41, 42
KPROBE_MULTI_RETURN = 1                 # BPF_F_KPROBE_MULTI_RETURN
HELPER_GET_ATTACH_COOKIE = 174


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


def prog_load(prog_type: int, insns: list[int], expected_attach_type: int = 0,
              attach_btf_id: int = 0) -> int:
    """Load a program of raw instructions (u64 each); its fd, or -errno."""
    code = (ctypes.c_uint64 * len(insns))(*insns)
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = bytearray(128)
    # union bpf_attr for BPF_PROG_LOAD (offsets from include/uapi/linux/bpf.h)
    ctypes.c_uint32.from_buffer(attr, 0).value = prog_type
    ctypes.c_uint32.from_buffer(attr, 4).value = len(insns)
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(code)
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(license_)
    ctypes.c_uint32.from_buffer(attr, 68).value = expected_attach_type
    ctypes.c_uint32.from_buffer(attr, 108).value = attach_btf_id
    return _bpf(BPF_PROG_LOAD, bytes(attr))


RETURN_0 = [0x00000000000000B7, 0x0000000000000095]     # mov r0, 0 ; exit


def perf_link(prog_fd: int, perf_fd: int, cookie: int) -> int:
    """Run `prog_fd` on the perf event `perf_fd` (a kprobe), telling the program
    `cookie` (bpf_get_attach_cookie, 5.15+): a link's fd, or -errno. The link
    holds the event: its fd may be closed at once (one descriptor per probe)."""
    attr = struct.pack("<IIIIQ", prog_fd, perf_fd, ATTACH_PERF_EVENT, 0, cookie)
    return _bpf(BPF_LINK_CREATE, attr)


def kprobe_multi_link(prog_fd: int, symbols: list[str] | None, cookies: list[int],
                      addrs: list[int] | None = None, retprobe: bool = False) -> int:
    """One link running `prog_fd` at every function in `symbols`, or at each of
    `addrs` (one or the other), each telling the program its cookie (fprobe,
    5.18+ with CONFIG_FPROBE): the link's fd, or -errno. The program must have
    been loaded for it (expected_attach_type KPROBE_MULTI)."""
    count = len(symbols) if symbols is not None else len(addrs or ())
    if len(cookies) != count or (symbols is None) == (addrs is None):
        raise ValueError("symbols or addresses, and a cookie for each")   # the kernel reads cnt
    names = [ctypes.create_string_buffer(s.encode()) for s in symbols or ()]
    syms = (ctypes.c_char_p * len(names))(*[ctypes.addressof(n) for n in names])
    places = (ctypes.c_uint64 * count)(*(addrs or ()))
    marks = (ctypes.c_uint64 * count)(*cookies)
    # link_create: prog_fd, target_fd, attach_type, flags, then kprobe_multi's
    # flags, cnt, syms, addrs, cookies
    attr = struct.pack("<IIIIIIQQQ", prog_fd, 0, ATTACH_KPROBE_MULTI, 0,
                       KPROBE_MULTI_RETURN if retprobe else 0, count,
                       ctypes.addressof(syms) if symbols is not None else 0,
                       ctypes.addressof(places) if addrs is not None else 0,
                       ctypes.addressof(marks))
    return _bpf(BPF_LINK_CREATE, attr)


def attach_cookie_load() -> int:
    """Load a kprobe program that calls bpf_get_attach_cookie: 0 when this kernel
    has attach cookies for kprobes (5.15+), else -errno."""
    call = 0x85 | (HELPER_GET_ATTACH_COOKIE << 32)          # call bpf_get_attach_cookie
    fd = prog_load(PROG_KPROBE, [call, *RETURN_0])
    return 0 if _close_ok(fd) else fd


def kprobe_multi_attach(symbol: str) -> int:
    """Attach `r0 = 0; exit` to `symbol` through a kprobe_multi link, then detach:
    0 when this kernel has them, else -errno of the step that failed."""
    prog = prog_load(PROG_KPROBE, RETURN_0, ATTACH_KPROBE_MULTI)
    if prog < 0:
        return prog
    try:
        link = kprobe_multi_link(prog, [symbol], [0])
        return 0 if _close_ok(link) else link
    finally:
        os.close(prog)


def fentry_load(btf_id: int) -> int:
    """Load `r0 = 0; exit` as an fentry program on the BTF function `btf_id`, then attach it.

    Returns 0 on success, else -errno of the step that failed. Loading alone is
    not proof: some kernels refuse only at attach time.
    """
    prog = prog_load(PROG_TRACING, RETURN_0, ATTACH_TRACE_FENTRY, btf_id)
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

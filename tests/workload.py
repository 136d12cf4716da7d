"""A process that does exactly the file opens a test asks for, under a comm the
test chose, after the test says go (so a tracer can attach to its pid first).

    python workload.py COMM [--wait] OP...
OP: open:PATH:FLAGS:MODE  (FLAGS like O_WRONLY|O_CREAT; MODE octal)
    openat2:PATH:FLAGS:MODE   (the raw openat2 syscall, which glibc does not wrap)
    storm:PREFIX:N            (N opens+closes of PREFIX-i that fail with ENOENT)
    diskio:PATH:N             (N O_DIRECT 4 KiB writes to PATH, each with fsync)
    udp:N                     (N datagrams to itself over loopback)
    paced:PREFIX:K:SECONDS    (K opens of PREFIX-i every 0.1 s for SECONDS, from just after
                               a turn of the CLOCK_MONOTONIC second)
    read:PATH:N               (N one-byte preads of PATH)
    sizes:PATH:N              (N preads of PATH of sizes 0, 1, 2, 3, 5, 8, ... spread over
                               0 to 64 KiB: pread64's count takes every log2 bucket)
    comms:PATH:N              (N opens of a missing PATH, each under a new random comm;
                               the comm chosen at start is back after)
    waitfor:PATH              (returns once PATH exists: the test says when to go on)
    chdir:PATH                (the working directory for the relative paths after it)
    openat:DIR:NAME           (openat on a descriptor of DIR: NAME relative to it)
Prints its pid first, then one line per op: the fd or -errno it got.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import time

SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}
libc = ctypes.CDLL(None, use_errno=True)


def set_comm(name: str) -> None:
    libc.prctl(15, name.encode()[:15], 0, 0, 0)     # PR_SET_NAME


def flags_of(text: str) -> int:
    return sum(getattr(os, f) for f in text.split("|") if f) if text else 0


def do_open(path: str, flags: str, mode: str) -> int:
    try:
        fd = os.open(path, flags_of(flags), int(mode or "0", 8))
    except OSError as e:
        return -e.errno
    os.close(fd)
    return fd


def do_openat2(path: str, flags: str, mode: str) -> int:
    how = (ctypes.c_uint64 * 3)(flags_of(flags), int(mode or "0", 8), 0)
    fd = libc.syscall(SYS_OPENAT2[platform.machine()], -100, path.encode(), ctypes.byref(how),
                      ctypes.sizeof(how))
    if fd < 0:
        return -ctypes.get_errno()
    os.close(fd)
    return fd


def do_storm(prefix: str, n: str) -> int:
    o = os.open
    for i in range(int(n)):
        try:
            os.close(o(f"{prefix}-{i}", os.O_RDONLY))
        except FileNotFoundError:
            pass
    return int(n)


def do_diskio(path: str, n: str) -> int:
    """n O_DIRECT writes of 4 KiB, each followed by fsync: interrupts of the
    disk under `path` (a file of its own, or the block device itself)."""
    import mmap  # noqa: PLC0415
    buf = mmap.mmap(-1, 4096)               # page-aligned, as O_DIRECT wants
    buf.write(b"bpfprobes" * 455)
    flags = os.O_WRONLY | os.O_DIRECT | (0 if path.startswith("/dev/") else os.O_CREAT)
    fd = os.open(path, flags, 0o600)
    try:
        for i in range(int(n)):
            os.pwrite(fd, buf, 4096 * (i % 256))
            os.fsync(fd)
    finally:
        os.close(fd)
    return int(n)


def do_udp(n: str) -> int:
    """n datagrams to ourselves over loopback (NET_RX softirqs in this task)."""
    import socket  # noqa: PLC0415
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got = 0
    for _ in range(int(n)):
        tx.sendto(b"bpfprobes", rx.getsockname())
        got += len(rx.recv(64)) > 0
    return got


def do_paced(prefix: str, per_tick: str, seconds: str) -> int:
    """per_tick failing opens every 0.1 s for `seconds`: a steady rate. It starts
    0.05 s after the monotonic clock turns a second (bpf_ktime_get_ns() is that
    clock), so the seconds a run touches, and --rate-limit's windows, fall the
    same way every time."""
    time.sleep(1.05 - time.monotonic() % 1.0)
    t0, i = time.monotonic(), 0
    while time.monotonic() - t0 < float(seconds):
        for _ in range(int(per_tick)):
            try:
                os.close(os.open(f"{prefix}-{i}", os.O_RDONLY))
            except FileNotFoundError:
                pass
            i += 1
        time.sleep(0.1)
    return i


def do_read(path: str, n: str) -> int:
    """n read(2) calls of one byte on `path`: n vfs_read calls in the kernel."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(int(n)):
            os.pread(fd, 1, 0)
    finally:
        os.close(fd)
    return int(n)


def do_sizes(path: str, n: str) -> int:
    """n preads of known, spread sizes: i-th size is (i * i * 7) % 65537."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in range(int(n)):
            os.pread(fd, (i * i * 7) % 65537, 0)
    finally:
        os.close(fd)
    return int(n)


def do_comms(path: str, n: str) -> int:
    """A comm storm: n distinct random task names, one failed open under each."""
    mine = sys.argv[1]                  # the comm chosen at start (no open to learn it)
    for _ in range(int(n)):
        set_comm(os.urandom(7).hex())
        try:
            os.close(os.open(path, os.O_RDONLY))
        except FileNotFoundError:
            pass
    set_comm(mine)
    return int(n)


def do_chdir(path: str) -> int:
    os.chdir(path)
    return 0


def do_openat(directory: str, name: str) -> int:
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
    except OSError as e:
        return -e.errno
    finally:
        os.close(dirfd)
    os.close(fd)
    return fd


def do_waitfor(path: str) -> int:
    """Wait until the test creates `path` (polling: no timing in the test rests on it)."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return 0


OPS = {"waitfor": do_waitfor, "chdir": do_chdir, "openat": do_openat, "comms": do_comms, "sizes": do_sizes, "open": do_open, "openat2": do_openat2, "storm": do_storm, "diskio": do_diskio,
       "udp": do_udp, "paced": do_paced, "read": do_read}


def main() -> None:
    comm, *rest = sys.argv[1:]
    set_comm(comm)
    libc.prctl(1, 9, 0, 0, 0)       # PR_SET_PDEATHSIG, SIGKILL: never outlive the test
    print(os.getpid(), flush=True)
    if rest and rest[0] == "--wait":
        rest = rest[1:]
        if sys.stdin.readline() != "go\n":
            return                  # the test ended (stdin closed) without saying go
    for op in rest:
        kind, *params = op.split(":")
        print(OPS[kind](*params), flush=True)


if __name__ == "__main__":
    main()

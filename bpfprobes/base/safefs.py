"""Directories and files that root writes and later trusts: the caches.

Why: a cache another user can write is code that root runs (cached bytecode, the
headers BCC compiles against). So nothing here trusts a path: a directory is
reached from / one component at a time, each opened relative to its parent's
descriptor with O_NOFOLLOW and checked with fstat on the descriptor we then use;
nothing can be swapped between the check and the use. Files are created under a
unique name with O_EXCL|O_NOFOLLOW and renamed into place, so a symlink planted
at a name is replaced, never written through. Modes are set with fchmod, so the
umask changes nothing.

The rules (issue 11):
- Above the private part (/, /var, /var/cache): owned by root or us, and writable
  by no one else unless sticky (in /tmp others cannot rename or remove what we
  create). A symlink there is followed only when root or we own it (only they
  could have made it or can change it: a /var that links to /data/var is common)
  and its target is walked by the same rules.
- The private part (the cache root and everything below it): never a symlink,
  owned by us, created 0700. One writable by group or others is refused: it may
  already hold someone else's files, and a new mode would not remove them. One
  that others can only read (0755, made by an older bpfprobes) is tightened to
  0700 on its descriptor: nothing could have been planted through it.
- Files we read: O_NOFOLLOW, a regular file, ours, writable by no one else.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator

from bpfprobes.base.errors import BpfprobesError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_DIR, SHARED_DIR, FILE_MODE = 0o700, 0o755, 0o600
TEMP_MARK = ".tmp-"             # in every temporary name: stale ones are found by it
MAX_LINKS = 40                  # as the kernel's own limit on symlinks in one lookup
HINT = "remove it (bpfprobes recreates it, 0700, owned by root) or point BPFPROBES_CACHE " \
       "at a directory only root can change"
ABOVE_HINT = "point BPFPROBES_CACHE at a directory whose parents only root can change"


class UnsafePath(BpfprobesError):
    """A directory or file we would have to trust and cannot: one line, exit 1."""


def _refuse(path: str, why: str, hint: str) -> UnsafePath:
    return UnsafePath(f"{path} {why}: refusing to trust it", hint)


def _check_shared(st: os.stat_result, path: str, hint: str) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is not a directory", hint)
    if st.st_uid not in (0, os.geteuid()):
        raise _refuse(path, f"is owned by uid {st.st_uid}", hint)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise _refuse(path, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})", hint)


def check_private(fd: int, path: str, hint: str = HINT) -> None:
    """A directory of ours that no one else can change; tightened to 0700."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is not a directory", hint)
    if st.st_uid != os.geteuid():
        raise _refuse(path, f"is owned by uid {st.st_uid}, not {os.geteuid()}", hint)
    if st.st_mode & 0o022:
        raise _refuse(path, f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})", hint)
    if stat.S_IMODE(st.st_mode) != PRIVATE_DIR:
        os.fchmod(fd, PRIVATE_DIR)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _mkdir_at(parent: int, name: str, mode: int) -> None:
    try:
        os.mkdir(name, 0o700, dir_fd=parent)     # the final mode comes from fchmod
    except FileExistsError:
        return                                  # made by another run (or planted): checked next
    fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _open_component(parent: int, where: str, name: str, private: bool, create: bool,
                    hint: str, links: int) -> tuple[int, str]:
    """(fd, path) of the directory `name` in `parent` (at path `where`), checked."""
    here = os.path.join(where, name)
    for attempt in range(2):
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            break
        except FileNotFoundError:
            if not create or attempt:
                raise
            _mkdir_at(parent, name, PRIVATE_DIR if private else SHARED_DIR)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):         # a symlink, or not a directory
                return _follow(parent, where, name, private, create, hint, links)
            raise
    try:
        if private:
            check_private(fd, here, hint)
        else:
            _check_shared(os.fstat(fd), here, ABOVE_HINT)
    except BaseException:
        os.close(fd)
        raise
    return fd, here


def _follow(parent: int, where: str, name: str, private: bool, create: bool, hint: str,
            links: int) -> tuple[int, str]:
    here = os.path.join(where, name)
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        raise _refuse(here, "is not a directory", hint)
    if private:
        raise _refuse(here, "is a symlink", hint)
    if st.st_uid not in (0, os.geteuid()):
        raise _refuse(here, f"is a symlink owned by uid {st.st_uid}", ABOVE_HINT)
    if links >= MAX_LINKS:
        raise _refuse(here, "has too many levels of symlinks", ABOVE_HINT)
    # `where` is a real path (every component above was a directory or followed),
    # so resolving `..` in the target by text is what the kernel would do
    target = os.path.normpath(os.path.join(where, os.readlink(name, dir_fd=parent)))
    return _walk(target, None, create, hint, links + 1)


def _walk(path: str, private_from: str | None, create: bool, hint: str,
          links: int) -> tuple[int, str]:
    parts = _parts(path)
    first_private = len(_parts(private_from)) - 1 if private_from is not None else len(parts)
    fd, where = os.open("/", DIR_FLAGS), "/"
    try:
        _check_shared(os.fstat(fd), "/", ABOVE_HINT)
        for i, name in enumerate(parts):
            child, where = _open_component(fd, where, name, i >= first_private, create, hint,
                                           links)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, where


def open_dir(path: str | os.PathLike, private_from: str | os.PathLike | None = None,
             create: bool = True, hint: str = HINT) -> int:
    """A descriptor of directory `path`, every component checked on its open
    descriptor. `private_from` (a prefix of `path`, itself included) and below
    are ours alone: created 0700 when missing (with `create`), refused when
    someone else could change them. Raises UnsafePath, or FileNotFoundError
    when `path` is missing and `create` is false."""
    path = os.path.abspath(path)
    private = os.path.abspath(private_from) if private_from is not None else None
    if private is not None and path != private and not path.startswith(private.rstrip("/") + "/"):
        raise ValueError(f"{private} is not a prefix of {path}")
    return _walk(path, private, create, hint, 0)[0]


@contextlib.contextmanager
def opened_dir(path: str | os.PathLike, private_from: str | os.PathLike | None = None,
               create: bool = True, hint: str = HINT) -> Iterator[int]:
    fd = open_dir(path, private_from, create, hint)
    try:
        yield fd
    finally:
        os.close(fd)


def open_subdir(dir_fd: int, name: str, path: str, hint: str = HINT) -> int | None:
    """Our private directory `name` in `dir_fd` (whose path is `path`), or None if
    it is missing, not a directory or a symlink. Refuses one others could change."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        check_private(fd, os.path.join(path, name), hint)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(dir_fd: int, name: str, limit: int = 64 << 20) -> bytes | None:
    """The bytes of `name` in `dir_fd` if it is a regular file of ours that no one
    else can write; None when missing, a symlink or not trusted."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        return None
    finally:
        os.close(fd)


def temp_name(prefix: str) -> str:
    """A name no other run uses, marked as temporary."""
    return f"{prefix}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def write_file(dir_fd: int, name: str, data: bytes, mode: int = FILE_MODE) -> None:
    """`name` in `dir_fd` replaced as a whole (readers see the old or the new file)."""
    tmp = temp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def make_temp_dir(dir_fd: int, prefix: str) -> str:
    """A new private directory in `dir_fd`; its name."""
    name = temp_name(prefix)
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        os.fchmod(fd, PRIVATE_DIR)
    finally:
        os.close(fd)
    return name


def remove(dir_fd: int, name: str) -> None:
    """`name` in `dir_fd` and all below it, if present. shutil.rmtree with dir_fd
    walks by descriptors and never follows a symlink."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def sweep_temps(dir_fd: int, older_than: float = 0.0) -> list[str]:
    """Remove the temporaries a killed run left in `dir_fd` (only those older
    than `older_than` seconds: a live run may be using a younger one)."""
    removed = []
    now = time.time()
    for name in os.listdir(dir_fd):
        if TEMP_MARK not in name:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if now - st.st_mtime >= older_than:
                remove(dir_fd, name)
                removed.append(name)
        except FileNotFoundError:
            pass
    return removed


@contextlib.contextmanager
def locked(dir_fd: int, name: str = ".lock", hint: str = HINT) -> Iterator[None]:
    """An exclusive flock on `name` in `dir_fd`, held for the block; the kernel
    drops it when the process dies, so a killed run never blocks the next."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     FILE_MODE, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _refuse(f"lock file {name}", "is a symlink", hint) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise _refuse(f"lock file {name}", "is not a regular file of ours", hint)
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                            # releases the lock


def identity(st: os.stat_result) -> list[int]:
    """What changes whenever a file's content does: a new file (package upgrades
    unpack and rename) changes dev/ino; a write changes size, mtime and ctime, and
    ctime cannot be set back by anyone."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

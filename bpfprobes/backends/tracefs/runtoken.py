"""Who this run is, what it created in the kernel, and whether it is alive.

A run is named by a random token (never a PID: PIDs repeat across PID
namespaces and are reused), which names its tracefs objects
(`bpfprobes_TOKEN`, `instances/bpfprobes-TOKEN`). Its liveness is an flock on
RUN_DIR/TOKEN.lock, held for the life of the process: the kernel releases it
when the process dies, however it dies, in whatever namespace it ran. The same
file lists what the run created (one JSON object a line, written before the
object is created where we create it, after where BCC does); a reaper that
can take a run's lock knows the run is dead and removes what it recorded.

Mount namespaces: the lock lives in /run, a tmpfs that `unshare --mount`
(and `--mount-proc`) share with the parent, so such runs see each other's
locks. A run in a container with a /run of its own cannot be seen; its
tracefs objects (global, visible everywhere) are then never removed by us:
nothing is removed unless its lock file is visible and provably free.

Files are created by root with explicit modes (directory 0700, file 0600)
whatever the umask, opened with O_NOFOLLOW and checked with fstat on the
open descriptor.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from bpfprobes.base import safefs
from bpfprobes.base.errors import BpfprobesError, KernelError

RUN_DIR = Path("/run/bpfprobes")
LOCK_SUFFIX = ".lock"
_NEW_SUFFIX = ".new"            # a lock file before it holds its lock (never reaped by name)
TOKEN_RE = re.compile(r"[0-9a-f]{16}")
_STALE_NEW_S = 60               # a .new file whose lock is free this long was left by a SIGKILL


def new_token() -> str:
    """16 random hex digits, never all digits: no PID-based reaper (an older
    version's or our legacy path) can take our names for a PID."""
    while True:
        token = secrets.token_hex(8)
        if not token.isdigit():
            return token


def is_token(text: str) -> bool:
    return TOKEN_RE.fullmatch(text) is not None and not text.isdigit()


def _open_checked_dir(path: Path, create: bool) -> int | None:
    """An O_DIRECTORY fd on `path`, every component checked on its open descriptor
    (safefs: above it root's or ours and not writable by others unless sticky; it
    ours and 0700, created so). None when it does not exist and `create` is False."""
    try:
        return safefs.open_dir(path, private_from=path, create=create,
                               hint="remove it; bpfprobes recreates it 0700, owned by root")
    except FileNotFoundError:
        if create:
            raise
        return None


def _read_records(fd: int) -> list[dict]:
    data = b""
    while True:
        chunk = os.pread(fd, 1 << 16, len(data))
        if not chunk:
            break
        data += chunk
    out = []
    for line in data.decode(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue                        # a line cut by a crash mid-write
        if isinstance(obj, dict):
            out.append(obj)
    return out


def outstanding(records: list[dict]) -> list[dict]:
    """What a run recorded as created (`"add"`) and not yet as removed (`"gone"`),
    in creation order."""
    live: dict[tuple, dict] = {}
    for r in records:
        key = (r.get("kind"), r.get("name"))
        if r.get("op") == "add":
            live[key] = r
        elif r.get("op") == "gone":
            live.pop(key, None)
    return list(live.values())


@dataclass
class Run:
    """This process's token, its held lock and its record of kernel objects."""

    token: str
    run_dir: Path
    fd: int
    owner_pid: int = field(default_factory=os.getpid)
    live: dict = field(default_factory=dict)      # (kind, name) -> record, not yet removed

    @classmethod
    def create(cls, run_dir: Path = RUN_DIR) -> "Run":
        try:
            return cls._create(run_dir)
        except OSError as e:
            raise KernelError(f"cannot create a run lock in {run_dir}: {e.strerror}",
                              "bpfprobes records what it creates in the kernel there "
                              "(root, a writable /run)") from e

    @classmethod
    def _create(cls, run_dir: Path) -> "Run":
        dfd = _open_checked_dir(run_dir, create=True)
        try:
            for _ in range(3):
                token = new_token()
                new, final = token + _NEW_SUFFIX, token + LOCK_SUFFIX
                fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_APPEND | os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    os.fchmod(fd, 0o600)
                    # locked before it gets the name reapers look at: never seen unlocked
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    os.write(fd, (json.dumps({"op": "run", "pid": os.getpid(),
                                              "started": round(time.time(), 3)}) + "\n").encode())
                    os.rename(new, final, src_dir_fd=dfd, dst_dir_fd=dfd)
                except FileNotFoundError:
                    os.close(fd)                # a reaper took a stale-looking .new: try again
                    continue
                except BaseException:
                    os.close(fd)
                    raise
                run = cls(token, run_dir, fd)
                atexit.register(run.release)
                return run
        finally:
            os.close(dfd)
        raise KernelError(f"cannot create a run lock in {run_dir}")

    def record(self, kind: str, name: str, **extra) -> None:
        """Say that this run is about to create (or has created) `name`."""
        rec = {"op": "add", "kind": kind, "name": name, **extra}
        self.live[(kind, name)] = rec
        try:
            os.write(self.fd, (json.dumps(rec) + "\n").encode())
        except OSError as e:                # e.g. /run full: create nothing unrecorded
            raise KernelError(f"cannot record {name} in {self.run_dir}: {e.strerror}") from e

    def forget(self, kind: str, name: str) -> None:
        """Say that `name` is removed: no reaper must touch that name again."""
        if self.live.pop((kind, name), None) is not None:
            try:
                os.write(self.fd, (json.dumps({"op": "gone", "kind": kind, "name": name}) +
                                   "\n").encode())
            except OSError:
                pass        # teardown goes on; a reaper finds the object gone later

    def release(self) -> None:
        """At exit: drop the lock file if nothing recorded is left, so no later
        reaper acts on a name someone else may reuse; else leave it to the next
        start (its lock goes with this process)."""
        if os.getpid() != self.owner_pid or self.fd < 0:
            return                           # a forked child: the lock is its parent's
        if not self.live:
            try:
                dfd = _open_checked_dir(self.run_dir, create=False)
            except (OSError, BpfprobesError):
                dfd = None
            if dfd is not None:
                try:
                    os.unlink(self.token + LOCK_SUFFIX, dir_fd=dfd)     # unlinked while locked
                except OSError:
                    pass
                finally:
                    os.close(dfd)
        os.close(self.fd)
        self.fd = -1


_CURRENT: Run | None = None


def current(run_dir: Path = RUN_DIR) -> Run:
    """This process's run, made (and locked) on first use."""
    global _CURRENT
    if _CURRENT is None or _CURRENT.owner_pid != os.getpid() or _CURRENT.fd < 0:
        _CURRENT = Run.create(run_dir)
    return _CURRENT


def existing() -> Run | None:
    """This process's run if one was made (nothing is created)."""
    return _CURRENT if _CURRENT is not None and _CURRENT.owner_pid == os.getpid() \
        and _CURRENT.fd >= 0 else None


@dataclass
class DeadRun:
    """A run whose lock we hold now (so it is dead), with what it left."""

    token: str
    records: list[dict]
    fd: int
    dfd: int
    name: str
    ino: int

    def finish(self, all_removed: bool) -> None:
        """Unlink its lock file (still locked, and still the same inode) when all
        its objects are gone; else keep it for the next start to try again."""
        try:
            if all_removed:
                try:
                    if os.stat(self.name, dir_fd=self.dfd, follow_symlinks=False).st_ino \
                            == self.ino:
                        os.unlink(self.name, dir_fd=self.dfd)
                except FileNotFoundError:
                    pass
        finally:
            os.close(self.fd)


def _take_if_free(dfd: int, name: str) -> tuple[int, os.stat_result] | None:
    """Our lock file `name`, opened safely and locked without waiting; None if its
    run is alive, or the file is not a lock of ours."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() \
                or stat.S_IMODE(st.st_mode) & 0o077:
            os.close(fd)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None                     # alive, in whatever namespace
        st = os.fstat(fd)
        if st.st_nlink == 0:                # its run ended cleanly as we opened it
            os.close(fd)
            return None
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def dead_runs(run_dir: Path = RUN_DIR) -> Iterator[DeadRun]:
    """Each run with a lock file in `run_dir` whose lock is free, locked by us
    while the caller removes its objects and calls finish()."""
    try:
        dfd = _open_checked_dir(run_dir, create=False)
    except (OSError, BpfprobesError):
        return                              # no lock we can trust: nothing is provably dead
    if dfd is None:
        return
    mine = existing()
    try:
        for name in sorted(os.listdir(dfd)):
            token, dot, suffix = name.partition(".")
            if not is_token(token) or (mine is not None and token == mine.token):
                continue
            if "." + suffix == _NEW_SUFFIX:
                _drop_stale_new(dfd, name)
                continue
            if "." + suffix != LOCK_SUFFIX:
                continue
            got = _take_if_free(dfd, name)
            if got is None:
                continue
            fd, st = got
            yield DeadRun(token, _read_records(fd), fd, dfd, name, st.st_ino)
    finally:
        os.close(dfd)


def runs_of(pid: int, run_dir: Path = RUN_DIR) -> list[tuple[str, list[dict]]]:
    """(token, what it has not removed) of each run with a lock file that process
    `pid` (as its namespace numbers it) made, alive or dead: for tests that check,
    by the run's own token, that nothing of a run remains."""
    try:
        dfd = _open_checked_dir(run_dir, create=False)
    except (OSError, BpfprobesError):
        return []
    if dfd is None:
        return []
    out = []
    try:
        for name in sorted(os.listdir(dfd)):
            token, _, suffix = name.partition(".")
            if not is_token(token) or "." + suffix != LOCK_SUFFIX:
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError:
                continue
            try:
                records = _read_records(fd)
            finally:
                os.close(fd)
            if records and records[0].get("op") == "run" and records[0].get("pid") == pid:
                out.append((token, outstanding(records)))
    finally:
        os.close(dfd)
    return out


def _drop_stale_new(dfd: int, name: str) -> None:
    """A lock file killed before it was named: it recorded nothing."""
    got = _take_if_free(dfd, name)
    if got is None:
        return
    fd, st = got
    try:
        if time.time() - st.st_mtime > _STALE_NEW_S:
            os.unlink(name, dir_fd=dfd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Compiled programs kept on disk and loaded with bpf(2) on later starts, without BCC.

Why: BCC compiles with clang inside the process that runs it, which is most
of a tool's start (~1 s here) and of its memory (LLVM: ~150 MB peak RSS).
What BCC makes of a program depends only on the C text, its -D flags, the
headers, BCC and the kernel, so the first start compiles it in a short-lived
child process and saves it, and every start loads it directly: live in
~0.4 s, ~50 MB, and no LLVM in a long tracing session.

Saved per program (JSON, keyed by a hash of all of the above): each attached
function's instructions with the places that hold a map fd, each map's
definition as the kernel reports it, the license and the kernel version.
Loading creates the maps, writes their new fds into those places and loads
each function. Defines that change from run to run (the tool's own PID, a -p
filter) are compiled as placeholders and patched in at load (RUNTIME_DEFINES),
so they do not make every start a miss. Attaching without BCC covers tracepoints, raw tracepoints and
kprobes/kretprobes through the kprobe PMU; anything else (uprobes, kretprobe
maxactive) goes through BCC as before, and so does everything where the
direct ring reader is not offered (perfring.supported()). A cached program
the kernel refuses is dropped and compiled again by BCC.

The cache is trusted only if it is ours: a directory and files owned by this
user and writable by no one else (loading bytecode as root from a file anyone
could write would be a hole).
"""
from __future__ import annotations

import base64
import ctypes
import fcntl
import hashlib
import importlib.util
import json
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import loader, perfring
from .codegen import Program
from .errors import BpfprobesError, CompileError, KernelError
from .headers import CACHE, Headers

FORMAT = 1
DIR = CACHE / "programs"
DISABLE_ENV = "BPFPROBES_NO_PROGRAM_CACHE"

PROG_TYPES = {"kprobe": 2, "kretprobe": 2, "tracepoint": 5, "raw_tracepoint": 17}
BPF_PSEUDO_MAP_FD = 1
BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 0, 5, 17
PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
LOG_SIZE = 1 << 16


def usable(attaches: list[loader.Attach]) -> bool:
    """True when a program with these attaches can be cached and loaded directly."""
    return (perfring.supported() and not os.environ.get(DISABLE_ENV)
            and all(a.kind in PROG_TYPES and not a.maxactive for a in attaches)
            and all(a.kind not in ("kprobe", "kretprobe") or _kprobe_pmu() for a in attaches))


def load(program: Program, headers: Headers, attaches: list[loader.Attach]):
    """A loaded program: from the cache when it holds this one, else compiled by
    BCC, saved, and loaded the same way. Either kind attaches, closes and hands
    out maps (`loaded[name].map_fd`) as loader.Loaded does."""
    if not usable(attaches):
        return loader.compile_program(program, headers)
    generic, values = split_runtime(program)
    path = DIR / f"{cache_key(generic, headers)}.json"
    obj = _read(path)
    if obj is not None:
        try:
            return DirectLoaded(obj, program, values, origin="cached")
        except (OSError, KeyError, ValueError, TypeError):
            path.unlink(missing_ok=True)        # refused by this kernel: compile afresh
    obj = _compile_in_child(generic, headers, attaches)
    if obj is not None:
        try:
            loaded = DirectLoaded(obj, program, values, origin="compiled")
        except (OSError, KeyError, ValueError, TypeError):
            loaded = None                       # BCC loads what we cannot: not cached
        if loaded is not None:
            try:
                _write(path, obj)
            except OSError:
                pass                            # no cache this time; the run goes on
            return loaded
    return loader.compile_program(program, headers)     # as before the cache


def _compile_in_child(program: Program, headers: Headers,
                      attaches: list[loader.Attach]) -> dict | None:
    """BCC's compile in a forked child, which sends back the object to cache: LLVM
    (~150 MB) lives and dies there, and the tracing process stays small for the
    whole session. A compile error comes back as the same CompileError; None
    means the program compiled but cannot be cached."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: never returns
        try:
            os.close(read_end)
            try:
                with loader.compile_program(program, headers) as compiled:
                    msg = {"object": _object(compiled, attaches)}
            except BpfprobesError as e:
                msg = {"error": [type(e).__name__, e.what, e.hint]}
            except BaseException as e:          # noqa: BLE001 - reported, then exit
                msg = {"uncacheable": repr(e)}
            with os.fdopen(write_end, "w") as f:
                json.dump(msg, f)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        text = f.read()
    os.waitpid(pid, 0)
    msg = json.loads(text) if text else {"uncacheable": "the compiling child died"}
    if "error" in msg:
        kind, what, hint = msg["error"]
        raise (KernelError if kind == "KernelError" else CompileError)(what, hint)
    return msg.get("object")


# -D values that differ from run to run (the tool's own PID, a -p filter) would
# make every start a cache miss: the program is compiled with a placeholder,
# and each instruction holding the placeholder gets the real value at load.
# Only 32-bit values that stay positive as a sign-extended immediate qualify.
RUNTIME_DEFINES = {"SKIP_PID": 0x5EED0001, "FILTER_PID": 0x5EED0002, "FILTER_TID": 0x5EED0003,
                   "FILTER_UID": 0x5EED0004,
                   **{f"IRQ_{n}": 0x5EED0100 + n for n in range(16)},   # irq's line slots
                   "RATE_LIMIT": 0x5EED0200}


def split_runtime(program: Program) -> tuple[Program, dict[str, int]]:
    """(the program with placeholders for runtime defines, their real values)."""
    flags, values = [], {}
    for flag in program.cflags:
        name, eq, value = flag[2:].partition("=")
        if flag.startswith("-D") and eq and name in RUNTIME_DEFINES:
            try:
                number = int(value, 0)
            except ValueError:
                number = -1
            if 0 <= number < 2**31:
                values[name] = number
                flag = f"-D{name}={RUNTIME_DEFINES[name]:#x}"
        flags.append(flag)
    return Program(program.name, program.text, tuple(flags)), values


def cache_key(program: Program, headers: Headers) -> str:
    """Everything that decides what BCC emits, hashed."""
    u = os.uname()
    spec = importlib.util.find_spec("bcc")
    bcc_stamp = ""
    if spec is not None and spec.origin:
        st = os.stat(spec.origin)
        bcc_stamp = f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}"
    parts = (FORMAT, program.text, "\0".join(program.cflags), u.release, u.version, u.machine,
             headers.path, headers.release, len(perfring.cpus("possible")), bcc_stamp)
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:32]


# ---- saving ---------------------------------------------------------------------------

def _map_sites(code: bytes, names_by_fd: dict[int, str]) -> list[tuple[int, str]]:
    """(instruction index, map name) of every ld_imm64 that loads a map fd."""
    sites = []
    for i in range(0, len(code), 8):
        op, regs, _off, imm = struct.unpack_from("<BBhi", code, i)
        if op == 0x18 and regs >> 4:
            if regs >> 4 != BPF_PSEUDO_MAP_FD or imm not in names_by_fd:
                raise ValueError("an ld_imm64 this cache cannot relocate")
            sites.append((i // 8, names_by_fd[imm]))
    return sites


def _value_sites(code: bytes) -> list[tuple[int, str]]:
    """(instruction index, define) of every immediate holding a runtime placeholder."""
    by_value = {v: k for k, v in RUNTIME_DEFINES.items()}
    return [(i // 8, by_value[imm]) for i in range(0, len(code), 8)
            for imm in struct.unpack_from("<i", code, i + 4) if imm in by_value]


def _object(loaded, attaches: list[loader.Attach]) -> dict:
    fns = {a.fn: PROG_TYPES[a.kind] for a in attaches}
    exported = loader.export_object(loaded, list(fns))
    names_by_fd = {fd: name for name, fd in exported["tables"].items()}
    funcs = {}
    for fn, code in exported["code"].items():
        funcs[fn] = {"prog_type": fns[fn], "insns": base64.b64encode(code).decode(),
                     "maps": _map_sites(code, names_by_fd), "values": _value_sites(code)}
    # every table, used by these functions or not: tools look maps up by name
    maps = {name: perfring.map_info(fd) for name, fd in exported["tables"].items()}
    return {"format": FORMAT, "license": exported["license"],
            "kern_version": exported["kern_version"], "maps": maps, "functions": funcs}


def _trusted(path: Path) -> bool:
    st = os.stat(path)
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _trusted(path.parent):
        return
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)                       # readers see a whole file or none


def _read(path: Path) -> dict | None:
    try:
        if not (_trusted(path.parent) and _trusted(path)):
            return None
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if obj.get("format") == FORMAT else None


# ---- loading and attaching without BCC --------------------------------------------------

@dataclass(frozen=True)
class MapRef:
    """What tools use of a map: its name and fd (as BCC's tables offer `map_fd`)."""
    name: str
    map_fd: int


def _create_map(name: str, m: dict) -> int:
    attr = struct.pack("<IIIIIII16s", m["type"], m["key_size"], m["value_size"],
                       m["max_entries"], m["flags"], 0, 0, name.encode()[:15])
    return perfring.bpf(BPF_MAP_CREATE, attr)


def _load_prog(name: str, prog_type: int, code: bytes, license_: str, kern_version: int) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license_.encode())
    log = ctypes.create_string_buffer(LOG_SIZE)

    def attempt(level: int) -> int:
        attr = struct.pack("<IIQQIIQII16s", prog_type, len(code) // 8, ctypes.addressof(insns),
                           ctypes.addressof(lic), level, LOG_SIZE if level else 0,
                           ctypes.addressof(log) if level else 0, kern_version, 0,
                           name.encode()[:15])
        return perfring.bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(0)
    except OSError as e:
        try:                                    # again, for the verifier's reason
            attempt(1)
        except OSError:
            pass
        reason = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise OSError(e.errno, f"cannot load {name}: {e.strerror} {reason[0]}") from None


@dataclass(frozen=True)
class _Pmu:
    type: int
    retprobe_bit: int


_pmu_cache: list = []


def _kprobe_pmu() -> _Pmu | None:
    """The kprobe PMU (perf_event_open attaches kprobes without tracefs), if any."""
    if not _pmu_cache:
        base = Path("/sys/bus/event_source/devices/kprobe")
        try:
            kind = int((base / "type").read_text())
            bit = int((base / "format" / "retprobe").read_text().split(":")[1])
            _pmu_cache.append(_Pmu(kind, bit))
        except (OSError, ValueError, IndexError):
            _pmu_cache.append(None)
    return _pmu_cache[0]


def _perf_attr(kind: int, config: int, config1: int = 0, config2: int = 0) -> bytes:
    # type, size, config, sample_period, sample_type, read_format, flags, wakeup_events,
    # bp_type, config1, config2
    return struct.pack("<IIQQQQQIIQQ", kind, perfring.ATTR_SIZE, config, 1, PERF_SAMPLE_RAW,
                       0, 0, 1, 0, config1, config2).ljust(perfring.ATTR_SIZE, b"\0")


def _tracepoint_id(target: str) -> int:
    from .kernel import current            # noqa: PLC0415 - tracefs, found (mounted) once
    category, event = target.split(":", 1)
    base = current().tracefs
    if base is None:
        raise OSError(2, "tracefs is not mounted")
    return int((base / "events" / category / event / "id").read_text())


BPF_PROG_GET_FD_BY_ID = 13
GONE_TIMEOUT = 2.0


def _prog_id(fd: int) -> int | None:
    info = ctypes.create_string_buffer(64)
    try:
        perfring.bpf(perfring.BPF_OBJ_GET_INFO_BY_FD,
                     struct.pack("<IIQ", fd, 64, ctypes.addressof(info)))
    except OSError:
        return None
    return struct.unpack_from("<I", info.raw, 4)[0]         # bpf_prog_info.id


def _wait_gone(ids: list[int | None]) -> None:
    """Until the kernel has freed these programs. A raw tracepoint's link lets go
    of its program only after an RCU grace period, so a program would still be
    listed (bpftool) for a moment after we exit: wait it out, briefly."""
    deadline = time.monotonic() + GONE_TIMEOUT
    for prog_id in ids:
        while prog_id is not None and time.monotonic() < deadline:
            try:
                os.close(perfring.bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<I", prog_id)))
            except OSError:
                break                           # ENOENT: gone
            time.sleep(0.005)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class DirectLoaded:
    """A cached program loaded with bpf(2): the same calls as loader.Loaded."""

    def __init__(self, obj: dict, program: Program, values: dict[str, int],
                 origin: str = "cached") -> None:
        self.program = program
        self.origin = origin                    # cached | compiled (this start)
        self.bpf = None
        self.attached: list[loader.Attach] = []
        self._maps: dict[str, int] = {}
        self._progs: dict[str, int] = {}
        self._events: list[int] = []            # perf event / raw tracepoint fds: the attachments
        try:
            for name, spec in obj["maps"].items():
                self._maps[name] = _create_map(name, spec)
            for fn, f in obj["functions"].items():
                code = bytearray(base64.b64decode(f["insns"]))
                for index, name in f["maps"]:
                    struct.pack_into("<i", code, index * 8 + 4, self._maps[name])
                for index, name in f["values"]:
                    struct.pack_into("<i", code, index * 8 + 4, values[name])
                self._progs[fn] = _load_prog(fn, f["prog_type"], bytes(code), obj["license"],
                                             obj["kern_version"])
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name: str) -> MapRef:
        return MapRef(name, self._maps[name])

    def attach(self, how: loader.Attach) -> None:
        try:
            self._events.append(self._attach(how))
        except (OSError, ValueError) as e:
            raise KernelError(f"cannot attach {how.describe()}: {e}") from e
        self.attached.append(how)

    def _attach(self, how: loader.Attach) -> int:
        prog = self._progs[how.fn]
        if how.kind == "raw_tracepoint":
            name = ctypes.create_string_buffer(how.target.encode())
            return perfring.bpf(BPF_RAW_TRACEPOINT_OPEN,
                                struct.pack("<QI", ctypes.addressof(name), prog))
        if how.kind == "tracepoint":
            attr = _perf_attr(PERF_TYPE_TRACEPOINT, _tracepoint_id(how.target))
            fd = perfring.perf_event_open(attr, -1, 0)
        else:
            pmu = _kprobe_pmu()
            name = ctypes.create_string_buffer(how.target.encode())
            ret = 1 << pmu.retprobe_bit if how.kind == "kretprobe" else 0
            fd = perfring.perf_event_open(_perf_attr(pmu.type, ret, ctypes.addressof(name),
                                                     how.offset), -1, 0)
        try:
            fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog)
            fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
        except OSError:
            os.close(fd)
            raise
        return fd

    def close(self) -> None:
        """Detach (close the events), then free programs and maps; idempotent.
        Each detach waits for an RCU grace period in the kernel: the events are
        closed in parallel so that exit stays quick with many probes."""
        threads = [threading.Thread(target=_close_quietly, args=(fd,)) for fd in self._events]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = [_prog_id(fd) for fd in self._progs.values()]
        for fd in [*self._progs.values(), *self._maps.values()]:
            _close_quietly(fd)
        self._events, self._progs, self._maps = [], {}, {}
        _wait_gone(ids)

    def __enter__(self) -> "DirectLoaded":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

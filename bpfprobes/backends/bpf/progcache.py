"""Compiled programs kept on disk and loaded with bpf(2) on later starts, without BCC.

Why: BCC compiles with clang inside the process that runs it, which is most
of a tool's start (~1 s here) and of its memory (LLVM: ~150 MB peak RSS).
What BCC makes of a program depends only on the C text, its -D flags, the
headers, BCC and the kernel, so the first start compiles it in a short-lived
child process and saves it, and every start loads it directly: live in
~0.2 s, ~25 MB, and no LLVM in a long tracing session (naming user addresses
loads libbcc's symbolizer: a uprobe's caller, ~60 MB more).

Saved per program (JSON, keyed by a hash of all of the above): each attached
function's instructions with the places that hold a map fd, each map's
definition as the kernel reports it, the license and the kernel version.
Loading creates the maps, writes their new fds into those places, writes the
run's settings into the config map and loads each function. What changes from
run to run (the tool's own PID, a -p filter) is in that map, not in the code
(runconfig.py), so one entry serves every run of a program's shape and no
instruction is ever patched. Attaching without BCC covers tracepoints, raw tracepoints,
kprobes/kretprobes and uprobes/uretprobes (USDT semaphores too) through their
perf PMUs; a kretprobe with maxactive goes through BCC as before. User addresses
are named by libbcc's symbol cache, which needs no compiled program. A cached program's events are read by
perfring's direct reader where it is offered (x86-64), else by libbcc's C
reader on the map (loader.MapPerfReader: arm64 needs its barriers). A cached program
the kernel refuses is dropped and compiled again by BCC.

The cache is trusted only if it is ours alone (safefs.py): its directories are
0700 and every component is checked on its open descriptor; an entry is read
with O_NOFOLLOW and trusted only if it is a regular file of ours that no one
else can write (loading bytecode as root from a file anyone could write would
be a hole); entries are written under a unique name and renamed into place.

What the key covers (anything that changes the bytecode):
- the program (text and -D flags), the kernel (release, version string,
  machine, possible CPUs), the headers' path and release;
- the toolchain: BCC's version, libbcc's file and the LLVM it links, read by
  the compile child from its own mappings (/proc/self/maps), with the identity
  (device, inode, size, mtime, ctime) of each of those files. Saved as a stamp
  beside the entries, so a warm start knows them with a few stat calls and
  without importing bcc; an upgrade changes an identity, the stamp no longer
  holds, and the next start compiles (and records) afresh;
- the content of the headers the program includes: clang lists them (-MD into
  a memfd), and the entry records each one's identity; a warm start re-checks
  them with one stat each (~150-350 files: 2-5 ms) and compiles afresh if any
  changed. ctime cannot be set back, so a rewrite of the same size is seen too;
  a header changed just before or during the compile (ctime within RACY_NS of
  its start) makes the entry not saved, as git treats "racily clean" files.
  Hashing the files instead would cost 8-16 ms a start; a stamp over the whole
  tree could not be checked in less than ~200 ms (16,000 files).
"""
from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import os
import re
import select
import signal
import struct
import sys
import time
from pathlib import Path

from bpfprobes.backends.bpf import loader, perfring, pmu
from bpfprobes.backends.bpf.loaded import STACK_DEPTH, LoadedProgram
from bpfprobes.base import safefs, signals
from bpfprobes.base.errors import BpfprobesError, CompileError, KernelError
from bpfprobes.gen.codegen import Program
from bpfprobes.kernel import bpfsys
from bpfprobes.kernel.headers import CACHE, Headers
from bpfprobes.plan.attach import Attach

FORMAT = 3                          # 3: settings in a config map, no patched values
DIR = CACHE / "programs"
TOOLCHAIN = "toolchain.stamp"       # which BCC and LLVM compile here (beside the entries)
# entries kept: every distinct probe spec or filter is a program of its own, so the
# least recently used go past this many (a hit marks its entry used)
MAX_ENTRIES = 256
RACY_NS = 2_000_000_000             # a header changed this close to a compile: not cached
STALE_TEMP_S = 600                  # a temporary entry older than this was left by a killed run
DISABLE_ENV = "BPFPROBES_NO_PROGRAM_CACHE"

PROG_TYPES = {"kprobe": 2, "kretprobe": 2, "uprobe": 2, "uretprobe": 2, "tracepoint": 5,
              "raw_tracepoint": 17}
# the perf PMU each probe kind is attached through (perf_event_open, no tracefs)
PMU_OF = {"kprobe": "kprobe", "kretprobe": "kprobe", "uprobe": "uprobe", "uretprobe": "uprobe"}
BPF_PSEUDO_MAP_FD = 1
BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 0, 5, 17
LOG_SIZE = 1 << 16


def usable(attaches: list[Attach]) -> bool:
    """True when a program with these attaches can be cached and loaded directly."""
    return (perfring.syscalls_known() and not os.environ.get(DISABLE_ENV)
            and all(a.kind in PROG_TYPES and not a.maxactive for a in attaches)
            # a uprobe only at a place probeplan checked, in the file it holds open
            and all(a.kind not in ("uprobe", "uretprobe") or (a.kernel_path and a.file_offset)
                    for a in attaches)
            and all(a.kind not in PMU_OF or pmu.pmu(PMU_OF[a.kind]) for a in attaches))


def load(program: Program, headers: Headers, attaches: list[Attach]) -> LoadedProgram:
    """A loaded program: from the cache when it holds this one, else compiled by
    BCC, saved, and loaded the same way. Either kind is a loaded.LoadedProgram.
    Raises safefs.UnsafePath (one line) when the cache is not ours alone."""
    if not usable(attaches):
        return loader.compile_program(program, headers)
    try:
        dir_fd = safefs.open_dir(DIR, private_from=DIR.parent)
    except OSError:                             # read-only or full: run as before the cache
        return loader.compile_program(program, headers)
    try:
        loaded = _load_cached(dir_fd, program, headers, attaches)
    finally:
        os.close(dir_fd)
    return loaded if loaded is not None else loader.compile_program(program, headers)


def _load_cached(dir_fd: int, program: Program, headers: Headers,
                 attaches: list[Attach]):
    """From the cache in `dir_fd`, or compiled in a child and saved there; None
    when BCC must load it in this process."""
    generic = Program(program.name, program.text, program.cflags)     # settings aside
    tools = _toolchain(dir_fd)                  # None: no compile since the toolchain changed
    name = f"{cache_key(generic, headers, tools)}.json" if tools is not None else None
    obj = _read_entry(dir_fd, name, headers) if name is not None else None
    if obj is not None:
        _touch(dir_fd, name)
        try:
            return DirectLoaded(obj, program, origin="cached")
        except (OSError, KeyError, ValueError, TypeError):
            _discard(dir_fd, name)              # refused by this kernel: compile afresh
    started = time.time_ns()
    deps = os.memfd_create("bpfprobes-deps")    # clang lists the headers it read here
    try:
        try:
            obj = _compile_in_child(with_dependencies(generic, deps), headers, attaches)
        except CompileError:
            obj = None                          # said again in process, without our flags
        listed = _read_all(deps)
    finally:
        os.close(deps)
    if obj is None:
        return None
    try:
        loaded = DirectLoaded(obj, program, origin="compiled")
    except (OSError, KeyError, ValueError, TypeError):
        return None                             # BCC loads what we cannot: not cached
    try:
        _save(dir_fd, generic, headers, obj, listed, started)
    except OSError:
        pass                                    # no cache this time; the run goes on
    return loaded


def _compile_in_child(program: Program, headers: Headers,
                      attaches: list[Attach]) -> dict | None:
    """BCC's compile in a forked child, which sends back the object to cache: LLVM
    (~150 MB) lives and dies there, and the tracing process stays small for the
    whole session. A compile error comes back as the same CompileError; None
    means the program compiled but cannot be cached.

    Signals: a terminal sends Ctrl-C to the whole process group, and a child that
    died of it looked like "cannot be cached", so the parent compiled again in
    process and attached anyway. The child ignores the terminal's signals and
    dies with its parent (PR_SET_PDEATHSIG); only the parent decides. The parent
    waits in short steps and, once the process's stop-signal recorder
    (base/signals.py) has a signal, kills and reaps the child and raises the
    stop: nothing is compiled again, nothing attached."""
    stop = signals.recorder()

    def stopping() -> bool:
        return stop is not None and stop.caught is not None

    parent = os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: never returns
        try:
            for s in CHILD_IGNORES:
                signal.signal(s, signal.SIG_IGN)
            signals.forget()
            _die_with_parent(parent)
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
    chunks: list[bytes] = []
    done = False
    waiting = select.poll()         # not select(): a descriptor may be past 1023 (count)
    waiting.register(read_end, select.POLLIN)
    try:
        while not stopping():
            if waiting.poll(CHILD_POLL_S * 1000):
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    done = True
                    break
                chunks.append(chunk)
    finally:
        if not done:                            # a stop signal, or an error here
            os.kill(pid, signal.SIGKILL)
        os.close(read_end)
        os.waitpid(pid, 0)
    if stopping():                              # not compiled again in process either
        stop.check("compiling in a child process")
    text = b"".join(chunks).decode()
    msg = json.loads(text) if text else {"uncacheable": "the compiling child died"}
    if "error" in msg:
        kind, what, hint = msg["error"]
        raise (KernelError if kind == "KernelError" else CompileError)(what, hint)
    return msg.get("object")


# what a terminal sends to a whole process group, and what a supervisor may:
# the compile child ignores them all and leaves the decision to its parent
CHILD_IGNORES = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTERM, signal.SIGHUP)
CHILD_POLL_S = 0.05                             # how soon the parent sees a stop signal
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the compile child: SIGKILL when the parent dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:                  # it died before prctl: nobody will read
        os._exit(0)


def cache_key(program: Program, headers: Headers, toolchain: dict | None = None) -> str:
    """Everything that decides what BCC emits, hashed. (The headers' content is
    checked per entry: which files count is known only after a compile.)"""
    u = os.uname()
    tools = {k: (toolchain or {}).get(k) for k in TOOLCHAIN_KEYED}
    parts = (FORMAT, program.text, "\0".join(program.cflags), u.release, u.version, u.machine,
             headers.path, headers.release, len(perfring.cpus("possible")),
             json.dumps(tools, sort_keys=True))
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode() + b"\0")
    return h.hexdigest()[:32]


# ---- the toolchain: which BCC and LLVM make the bytecode ------------------------------

TOOLCHAIN_KEYED = ("bcc", "libbcc", "llvm", "files")     # the rest only says the stamp holds
LIBBCC_SONAME = "libbcc.so.0"       # what bcc's Python loads (bcc/libbcc.py)
LD_SO_CACHE = "/etc/ld.so.cache"    # rewritten by ldconfig: which libbcc.so.0 would load
_TOOLCHAIN_LIB = re.compile(r"^lib(bcc|LLVM|clang)")
_LLVM_VERSION = re.compile(r"^libLLVM[-.](?:so\.)?(\d+)")


def _mapped(maps: str) -> list[str]:
    """The toolchain libraries among a /proc/PID/maps text's files."""
    paths = {fields[5] for fields in (line.split(None, 5) for line in maps.splitlines())
             if len(fields) == 6 and fields[5].startswith("/")}
    return sorted(p for p in paths if _TOOLCHAIN_LIB.match(os.path.basename(p)))


def toolchain_from(maps: str, bcc_version: str, bcc_file: str | None) -> dict:
    """The toolchain a process with these mappings compiles with: versions, and
    the identity of each file that says so (to notice an upgrade by stat)."""
    libs = _mapped(maps)
    libbcc = next((p for p in libs if os.path.basename(p).startswith("libbcc.so")), None)
    # LLVM linked statically into libbcc: libbcc's own identity covers it
    llvm = next((m.group(1) for p in libs if (m := _LLVM_VERSION.match(os.path.basename(p)))),
                "in libbcc")
    files = [p for p in (bcc_file, *libs) if p]
    links = {}
    if libbcc is not None:
        link = os.path.join(os.path.dirname(libbcc), LIBBCC_SONAME)
        if os.path.islink(link):
            links[link] = os.readlink(link)
    watch = {LD_SO_CACHE: safefs.identity(os.stat(LD_SO_CACHE))} \
        if os.path.exists(LD_SO_CACHE) else {}
    return {"bcc": bcc_version, "libbcc": os.path.basename(libbcc) if libbcc else None,
            "llvm": llvm, "files": {p: safefs.identity(os.stat(p)) for p in files},
            "links": links, "watch": watch, "env": os.environ.get("LD_LIBRARY_PATH", "")}


def _toolchain_here() -> dict | None:
    """In the compile child, where bcc is loaded: its toolchain, or None."""
    bcc = sys.modules.get("bcc")
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
        return toolchain_from(maps, str(getattr(bcc, "__version__", "unknown")),
                              getattr(bcc, "__file__", None))
    except OSError:
        return None


def toolchain_holds(tools: dict) -> bool:
    """True while every file the stamp names is the one it saw (a few stat calls)."""
    try:
        return (tools["env"] == os.environ.get("LD_LIBRARY_PATH", "")
                and all(safefs.identity(os.stat(p)) == ident
                        for p, ident in {**tools["files"], **tools["watch"]}.items())
                and all(os.readlink(link) == target for link, target in tools["links"].items()))
    except (OSError, KeyError, TypeError, AttributeError):
        return False


def _toolchain(dir_fd: int) -> dict | None:
    data = safefs.read_file(dir_fd, TOOLCHAIN)
    try:
        tools = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return tools if isinstance(tools, dict) and toolchain_holds(tools) else None


# ---- the headers a program includes ----------------------------------------------------

def with_dependencies(program: Program, fd: int) -> Program:
    """The program with clang's dependency list (-MD) written to `fd` (a memfd:
    the compile child inherits it; nothing on disk to clean up)."""
    return Program(program.name, program.text,
                   (*program.cflags, "-MD", "-MF", f"/proc/self/fd/{fd}"))


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def parse_dependencies(text: bytes | str) -> list[str]:
    """The files a make-style dependency list names (BCC's own /virtual/ files
    come with libbcc, whose identity the key holds)."""
    if isinstance(text, bytes):
        text = text.decode(errors="surrogateescape")
    _target, sep, rest = text.replace("\\\n", " ").partition(": ")
    if not sep:
        return []
    names = [n.replace("\\ ", " ") for n in re.split(r"(?<!\\)\s+", rest.strip()) if n]
    return list(dict.fromkeys(n for n in names if not n.startswith("/virtual/")))


def header_fingerprints(base: str | None, names: list[str], started_ns: int) -> list | None:
    """[name, identity] of each header (relative names are from `base`, where BCC
    compiles), or None when they cannot vouch for what the compile read: none
    listed, one missing, or one changed within RACY_NS of the compile's start."""
    if not names or base is None:
        return None
    out = []
    for name in names:
        try:
            st = os.stat(os.path.join(base, name))
        except OSError:
            return None
        if st.st_ctime_ns >= started_ns - RACY_NS:
            return None
        out.append([name, *safefs.identity(st)])
    return out


def headers_current(recorded: object, base: str | None) -> bool:
    """True when every header an entry was compiled from is still the same file."""
    if not isinstance(recorded, list) or not recorded or base is None:
        return False
    try:
        return all(safefs.identity(os.stat(os.path.join(base, name))) == ident
                   for name, *ident in recorded)
    except (OSError, TypeError, ValueError):
        return False


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


def _object(loaded, attaches: list[Attach]) -> dict:
    fns = {a.fn: PROG_TYPES[a.kind] for a in attaches}
    exported = loader.export_object(loaded, list(fns))
    names_by_fd = {fd: name for name, fd in exported["tables"].items()}
    funcs = {}
    for fn, code in exported["code"].items():
        funcs[fn] = {"prog_type": fns[fn], "insns": base64.b64encode(code).decode(),
                     "maps": _map_sites(code, names_by_fd)}
    # every table, used by these functions or not: tools look maps up by name
    maps = {name: bpfsys.map_info(fd) for name, fd in exported["tables"].items()}
    return {"format": FORMAT, "license": exported["license"],
            "kern_version": exported["kern_version"], "maps": maps, "functions": funcs,
            "toolchain": _toolchain_here()}     # the parent keys the entry with it


def _save(dir_fd: int, program: Program, headers: Headers, obj: dict, listed: bytes,
          started_ns: int) -> None:
    """Keep a compiled object, with the stamps that say when it no longer holds."""
    tools = obj.get("toolchain")
    fingerprints = header_fingerprints(headers.relative_base, parse_dependencies(listed), started_ns)
    if tools is None or fingerprints is None:
        return                                  # what it was made from is unknown: not kept
    safefs.sweep_temps(dir_fd, older_than=STALE_TEMP_S)
    safefs.write_file(dir_fd, TOOLCHAIN, json.dumps(tools).encode())
    entry = {k: v for k, v in obj.items() if k != "toolchain"}
    entry["headers"] = fingerprints
    safefs.write_file(dir_fd, f"{cache_key(program, headers, tools)}.json",
                      json.dumps(entry).encode())
    _prune(dir_fd, MAX_ENTRIES)


def _touch(dir_fd: int, name: str) -> None:
    """Mark an entry used now (its mtime: what _prune orders by)."""
    try:
        os.utime(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        pass


def _prune(dir_fd: int, keep: int) -> None:
    """Remove the least recently used entries past `keep`."""
    aged = []
    for name in os.listdir(dir_fd):
        if name.endswith(".json") and safefs.TEMP_MARK not in name:
            try:
                aged.append((os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime, name))
            except FileNotFoundError:
                pass
    for _, name in sorted(aged)[:max(0, len(aged) - keep)]:
        _discard(dir_fd, name)


def _parse_entry(data: bytes | None) -> dict | None:
    try:
        obj = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("format") == FORMAT else None


def _read_entry(dir_fd: int, name: str, headers: Headers) -> dict | None:
    """The entry `name` if it is ours alone and its headers are unchanged."""
    obj = _parse_entry(safefs.read_file(dir_fd, name))
    return obj if obj is not None and headers_current(obj.get("headers"), headers.relative_base) else None


def _read(path: Path) -> dict | None:
    """The entry at `path` if ours alone and of this format (headers not checked)."""
    try:
        with safefs.opened_dir(path.parent, private_from=path.parent, create=False) as fd:
            return _parse_entry(safefs.read_file(fd, path.name))
    except (OSError, safefs.UnsafePath):
        return None


def _discard(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


# ---- loading and attaching without BCC --------------------------------------------------

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


def _tracepoint_id(target: str) -> int:
    from bpfprobes.kernel.running import current  # noqa: PLC0415 - tracefs, found once
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
    """A cached program loaded with bpf(2): loaded.LoadedProgram, as loader.Loaded."""

    def __init__(self, obj: dict, program: Program, origin: str = "cached") -> None:
        self.program = program
        self.origin = origin                    # cached | compiled (this start)
        self.attached: list[Attach] = []
        self._maps: dict[str, int] = {}
        self._progs: dict[str, int] = {}
        self._events: list[int] = []            # perf event / raw tracepoint fds: the attachments
        self._reader: loader.MapPerfReader | None = None     # libbcc's, where not direct
        self._ncpu = len(perfring.cpus("possible"))     # per-CPU values' slots, read every poll
        try:
            for name, spec in obj["maps"].items():
                self._maps[name] = _create_map(name, spec)
            loader.configure(self, program)     # before any function can run
            for fn, f in obj["functions"].items():
                code = bytearray(base64.b64decode(f["insns"]))
                for index, name in f["maps"]:
                    struct.pack_into("<i", code, index * 8 + 4, self._maps[name])
                self._progs[fn] = _load_prog(fn, f["prog_type"], bytes(code), obj["license"],
                                             obj["kern_version"])
        except BaseException:
            self.close()
            raise

    # ---- loaded.LoadedProgram: maps by name, through bpf(2)

    def map_fd(self, name: str) -> int:
        return self._maps[name]

    def has_map(self, name: str) -> bool:
        return name in self._maps

    def prog_fds(self) -> list[int]:
        return list(self._progs.values())

    def per_cpu_sum(self, name: str) -> int:
        raw = perfring.map_lookup(self._maps[name], b"\0" * 4, 8 * self._ncpu)
        return sum(struct.unpack(f"<{self._ncpu}Q", raw)) if raw else 0

    def stack(self, name: str, stack_id: int) -> list[int]:
        raw = perfring.map_lookup(self._maps[name], struct.pack("<I", stack_id),
                                  8 * STACK_DEPTH)
        if raw is None:
            return []
        addrs = struct.unpack(f"<{STACK_DEPTH}Q", raw)
        return list(addrs[:addrs.index(0)] if 0 in addrs else addrs)

    def user_symbol(self, addr: int, pid: int, module: bool) -> str:
        return loader.user_symbol(addr, pid, module)

    def table_items(self, name: str) -> list[tuple[bytes, list[int]]]:
        fd, info = self._maps[name], bpfsys.map_info(self._maps[name])
        ncpu = self._ncpu
        out, key = [], None
        while (key := perfring.map_next_key(fd, key, info["key_size"])) is not None:
            raw = perfring.map_lookup(fd, key, 8 * ncpu)
            if raw is not None:
                out.append((key, list(struct.unpack(f"<{ncpu}Q", raw))))
        return out

    def open_perf_reader(self, name, on_sample, pages, on_lost, wakeup_events) -> None:
        # where perfring's direct reader is not offered (arm64): libbcc's C reader
        self._reader = loader.MapPerfReader(self._maps[name], on_sample, pages, on_lost,
                                            wakeup_events)

    def poll_perf(self, timeout_ms: int) -> None:
        self._reader.poll(timeout_ms)

    def consume_perf(self) -> None:
        self._reader.consume()

    def attach(self, how: Attach) -> None:
        try:
            self._events.append(self._attach(how))
        except (OSError, ValueError) as e:
            raise KernelError(f"cannot attach {how.describe()}: {e}") from e
        self.attached.append(how)

    def _attach(self, how: Attach) -> int:
        prog = self._progs[how.fn]
        if how.kind == "raw_tracepoint":
            name = ctypes.create_string_buffer(how.target.encode())
            return perfring.bpf(BPF_RAW_TRACEPOINT_OPEN,
                                struct.pack("<QI", ctypes.addressof(name), prog))
        if how.kind == "tracepoint":
            attr = pmu.perf_attr(pmu.PERF_TYPE_TRACEPOINT, _tracepoint_id(how.target))
            fd = perfring.perf_event_open(attr, -1, 0)
        elif how.kind in ("uprobe", "uretprobe"):
            # at the offset probeplan placed and checked, in the file it holds open
            return pmu.attach_uprobe(prog, how.kernel_path, how.file_offset,
                                     how.ref_ctr or 0, how.pid, how.kind == "uretprobe")
        else:
            fd = pmu.open_kprobe(how.target, how.offset, how.kind == "kretprobe")
        return pmu.with_program(fd, prog)

    def close(self) -> None:
        """Detach (close the events), then free programs and maps; idempotent.
        Each detach waits for an RCU grace period in the kernel: the events are
        closed in parallel so that exit stays quick with many probes."""
        loader.in_parallel(_close_quietly, self._events)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        ids = [_prog_id(fd) for fd in self._progs.values()]
        for fd in [*self._progs.values(), *self._maps.values()]:
            _close_quietly(fd)
        self._events, self._progs, self._maps = [], {}, {}
        _wait_gone(ids)

    def __enter__(self) -> "DirectLoaded":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

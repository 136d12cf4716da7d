"""BCC: compile, attach, detach. The only module that imports bcc.

`Loaded` is a context manager: whatever happens (an attach that fails half
way, a signal, an exception in output), leaving the block detaches every
probe and closes every perf buffer, so nothing of ours stays in the kernel.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import struct
import tempfile
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from bpfprobes.backends.bpf import perfring, pmu
from bpfprobes.backends.tracefs import dynevents
from bpfprobes.base import signals
from bpfprobes.base.errors import CompileError, KernelError
from bpfprobes.base.safetext import decode_exact
from bpfprobes.gen.codegen import Program
from bpfprobes.kernel import bpfsys
from bpfprobes.kernel.headers import Headers
from bpfprobes.plan.attach import Attach


def _import_bcc():
    try:
        import bcc  # noqa: PLC0415 - imported lazily so --help and unit tests need no BCC
    except ImportError as e:
        raise CompileError("BCC's Python module is not importable",
                          "install python3-bpfcc and run with /usr/bin/python3 or the "
                          "project's .venv (make setup)") from e
    return bcc


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what BCC/clang write to fd 2, to turn it into one clear line."""
    lines: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _first_error(lines: list[str]) -> str:
    for line in lines:
        if re.search(r"error:", line):
            return re.sub(r"^.*?error:\s*", "", line).strip()
    return next((ln.strip() for ln in lines if ln.strip()), "no compiler output")


PARALLEL_MAX = 256          # threads at once: a thousand detaches need not be a thousand threads


def in_parallel(fn: Callable, items) -> None:
    """fn(item) for each item, many at once, returning when all are done: each detach
    waits for an RCU grace period in the kernel (~60 ms here), and one after another
    they make exit slow."""
    items = list(items)
    work = iter(items)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                item = next(work, _DONE)
            if item is _DONE:
                return
            fn(item)

    threads = [threading.Thread(target=worker) for _ in range(min(PARALLEL_MAX, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


_DONE = object()


class MapPerfReader:
    """libbcc's C perf reader on an events map known by its fd: how a program the
    cache loaded is read where perfring's direct reader is not offered. Its C
    code has the read barriers a weakly ordered CPU (arm64) needs, which Python
    cannot issue, and it needs no BCC object: one ring per online CPU, each
    ring's fd written into the map, as BCC's own open_perf_buffer does."""

    def __init__(self, map_fd: int, on_sample: Callable[[bytes], None], pages: int,
                 on_lost: Callable[[int], None], wakeup_events: int) -> None:
        libbcc = _import_bcc().libbcc
        self._lib = lib = libbcc.lib
        string_at = ctypes.string_at
        # kept referenced: libbcc calls them for as long as the readers live
        self._callbacks = (libbcc._RAW_CB_TYPE(lambda _c, data, size: on_sample(string_at(data, size))),
                           libbcc._LOST_CB_TYPE(lambda _c, count: on_lost(count)))
        self._readers: list[int] = []
        try:
            for cpu in perfring.cpus():
                opts = libbcc.bcc_perf_buffer_opts(pid=-1, cpu=cpu, wakeup_events=wakeup_events)
                reader = lib.bpf_open_perf_buffer_opts(*self._callbacks, None, pages,
                                                       ctypes.byref(opts))
                if not reader:
                    raise KernelError(f"cannot open a perf buffer on CPU {cpu}",
                                      "fewer --buffer-pages, or raise the locked-memory limit")
                self._readers.append(reader)
                bpfsys.map_update(map_fd, struct.pack("<I", cpu),
                                  struct.pack("<I", lib.perf_reader_fd(reader)))
        except BaseException:
            self.close()
            raise
        self._array = (ctypes.c_void_p * len(self._readers))(*self._readers)

    def poll(self, timeout_ms: int) -> None:
        self._lib.perf_reader_poll(len(self._readers), self._array, timeout_ms)

    def consume(self) -> None:
        self._lib.perf_reader_consume(len(self._readers), self._array)

    def close(self) -> None:
        """Unmap and close every ring (idempotent)."""
        for reader in self._readers:
            self._lib.perf_reader_free(reader)
        self._readers, self._array = [], None


class Loaded:
    """A program BCC compiled and loaded in this process, and the probes
    attached from it (loaded.LoadedProgram's calls; the BCC object stays here)."""

    origin = "compiled"             # by BCC, in this process (progcache.DirectLoaded: cached too)

    def __init__(self, bpf, program: Program) -> None:
        self.bpf = bpf
        self.program = program
        self.attached: list[Attach] = []
        # perf events and links attached by our own calls (pmu.py): USDT sites,
        # cookie kprobes, kprobe_multi
        self._own_events: list[int] = []

    def map_fd(self, name: str) -> int:
        return self.bpf[name].map_fd

    def has_map(self, name: str) -> bool:
        try:
            self.bpf[name]
        except KeyError:
            return False
        return True

    def prog_fds(self) -> list[int]:
        return [f.fd for f in self.bpf.funcs.values()] if self.bpf is not None else []

    def per_cpu_sum(self, name: str) -> int:
        table = self.bpf[name]
        per_cpu = table[table.Key(0)]
        return sum(per_cpu[i] for i in range(len(per_cpu)))

    def stack(self, name: str, stack_id: int) -> list[int]:
        return list(self.bpf[name].walk(stack_id))

    def user_symbol(self, addr: int, pid: int, module: bool) -> str:
        return user_symbol(addr, pid, module)

    def table_items(self, name: str) -> list[tuple[bytes, list[int]]]:
        return [(bytes(key), list(values)) for key, values in self.bpf[name].items()]

    def open_perf_reader(self, name: str, on_sample: Callable[[bytes], None], pages: int,
                         on_lost: Callable[[int], None], wakeup_events: int) -> None:
        string_at = ctypes.string_at

        def sample(_cpu, data, size):
            on_sample(string_at(data, size))
        self.bpf[name].open_perf_buffer(sample, page_cnt=pages, lost_cb=on_lost,
                                        wakeup_events=wakeup_events)

    def poll_perf(self, timeout_ms: int) -> None:
        self.bpf.perf_buffer_poll(timeout_ms)

    def consume_perf(self) -> None:
        self.bpf.perf_buffer_consume()

    def attach(self, how: Attach) -> None:
        b = self.bpf
        calls = {
            "kprobe": lambda: b.attach_kprobe(event=how.target, fn_name=how.fn,
                                              event_off=how.offset),
            "kretprobe": lambda: b.attach_kretprobe(event=how.target, fn_name=how.fn,
                                                    maxactive=how.maxactive),
            "tracepoint": lambda: b.attach_tracepoint(tp=how.target, fn_name=how.fn),
            "raw_tracepoint": lambda: b.attach_raw_tracepoint(tp=how.target.encode(),
                                                              fn_name=how.fn.encode()),
            # the held descriptor of the checked file, not a path looked up again (F1)
            "uprobe": lambda: b.attach_uprobe(name=how.kernel_path or how.path, sym=how.target,
                                              fn_name=how.fn, pid=how.pid, **_uaddr(how)),
            "uretprobe": lambda: b.attach_uretprobe(name=how.kernel_path or how.path,
                                                    sym=how.target,
                                                    fn_name=how.fn, pid=how.pid, **_uaddr(how)),
        }
        ours = {        # attached by our own calls (pmu.py): BCC's Python cannot do these
            # a USDT site, with its semaphore
            "uprobe": how.ref_ctr is not None and (lambda: pmu.attach_uprobe(
                b.load_func(how.fn.encode(), b.KPROBE).fd, how.kernel_path or how.path,
                how.file_offset, how.ref_ctr, how.pid)),
            # a kprobe telling its program its cookie, or many through one link
            "kprobe": how.cookie is not None and (lambda: pmu.attach_kprobe_link(
                b.load_func(how.fn.encode(), b.KPROBE).fd, how.target, how.cookie, how.offset)),
            "kprobe_multi": lambda: pmu.attach_kprobe_multi(
                b.load_func(how.fn.encode(), b.KPROBE,
                            attach_type=bpfsys.ATTACH_KPROBE_MULTI).fd,
                list(how.members)),
        }.get(how.kind)
        if ours:
            calls[how.kind] = lambda: self._own_events.append(ours())
        failure = None
        # an event BCC writes to kprobe/uprobe_events for this attach is recorded as ours
        with _stderr_captured() as noise, \
                (contextlib.nullcontext() if ours else dynevents.bcc_attach(how.kind, how.target)):
            try:
                calls[how.kind]()
            except Exception as e:  # BCC raises bare Exception for every attach failure
                failure = e
        if failure is not None:
            hint = _first_error(noise) if noise else ""
            if how.ref_ctr and isinstance(failure, OSError) and failure.errno == errno.EINVAL:
                hint = ("a probe without this semaphore may sit at that address (a p: spec on "
                        "it, or another tool): the kernel takes one reference counter per place")
            raise KernelError(f"cannot attach {how.describe()}: {failure}", hint) from failure
        self.attached.append(how)

    def close(self) -> None:
        """Detach everything and free the program (idempotent)."""
        # closing the event or link detaches it (a USDT probe can have hundreds of
        # sites; count, a thousand kprobes)
        in_parallel(os.close, self._own_events)
        self._own_events = []
        if self.bpf is not None:
            with _stderr_captured():
                self._detach_in_parallel()
                self.bpf.cleanup()          # the rest (uprobes), perf buffers, the module
            self.bpf = None
            dynevents.bcc_detached()        # BCC's events it left (a failed attach): ours, removed

    def _detach_in_parallel(self) -> None:
        """Each tracepoint/kprobe detach waits for an RCU grace period in the
        kernel (~60 ms here); done one after another they make exit slow."""
        b = self.bpf
        detach = {"tracepoint": lambda a: b.detach_tracepoint(a.target.encode()),
                  "kprobe": lambda a: b.detach_kprobe(a.target.encode(), a.fn.encode()),
                  "kretprobe": lambda a: b.detach_kretprobe(a.target.encode(), a.fn.encode())}
        jobs = [a for a in self.attached if a.kind in detach and a.cookie is None]

        def one(a: Attach) -> None:
            try:
                detach[a.kind](a)
            except Exception:  # noqa: BLE001 - cleanup() below retries whatever is left
                pass

        in_parallel(one, jobs)

    def __enter__(self) -> "Loaded":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _uaddr(how: Attach) -> dict:
    return {"addr": how.offset} if not how.target else {"sym_off": how.offset} \
        if how.offset else {}


_NAMED: dict[tuple, str] = {}
NAMED_MAX = 8192


def prepare_user_symbols() -> None:
    """Load libbcc's symbolizer before tracing starts: a cached program never
    imported BCC, and naming the first user address mid-run would stall the
    reader and grow the process unannounced."""
    _import_bcc()


def user_symbol(addr: int, pid: int, module: bool) -> str:
    """`sym+off [module]` of a user address in process pid, or `0x...`: libbcc's
    symbol cache (BPF.sym needs no compiled program, so a cached one uses it too).
    A name found is remembered per address, process and executable (the inode
    libbcc itself checks to notice an exec), so a storm from one call site is
    named once, not once per event; an address not found is asked again."""
    try:
        exe = os.stat(f"/proc/{pid}/exe")
        key: tuple | None = (addr, pid, module, exe.st_dev, exe.st_ino)
    except OSError:
        key = None
    if key is not None and (known := _NAMED.get(key)) is not None:
        return known
    name = _import_bcc().BPF.sym(addr, pid, show_module=module, show_offset=True)
    text = decode_exact(name) if isinstance(name, bytes) else str(name)
    if text.startswith("[unknown]"):
        return f"0x{addr:x}" + text[len("[unknown]"):]
    if key is not None:
        if len(_NAMED) >= NAMED_MAX:
            _NAMED.clear()
        _NAMED[key] = text
    return text


class CompileInterrupted(Exception):
    """A stop signal came while BCC compiled in this process. LLVM cannot be
    interrupted, and a process must not finalize while it runs on another thread:
    the caller says so in one line and leaves with os._exit. Nothing is attached
    yet; what the compile loads dies with the process."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} during set-up (compiling)")


def _interruptible(call):
    """`call()` on a worker thread, the main thread watching for a stop signal
    (a Python handler cannot run while the main thread is inside LLVM)."""
    stop = signals.recorder()
    if stop is None or threading.current_thread() is not threading.main_thread():
        return call()
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=work, name="bcc-compile", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
        if stop.caught is not None and worker.is_alive():
            raise CompileInterrupted(stop.caught)
    if "error" in box:
        raise box["error"]
    return box["value"]


def compile_program(program: Program, headers: Headers) -> Loaded:
    """Compile and load (not attach). Failures become one-line CompileErrors."""
    bcc = _import_bcc()
    if headers.status == "none":
        raise CompileError(f"no kernel headers for BCC to compile against ({headers.source})",
                           "install linux-headers-$(dpkg --print-architecture) or enable "
                           "CONFIG_IKHEADERS (make setup does this)")
    env = headers.bcc_env()
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        failure = None
        with _stderr_captured() as noise:
            try:
                bpf = _interruptible(lambda: bcc.BPF(text=program.text.encode(),
                                                     cflags=list(program.cflags),
                                                     allow_rlimit=False))
            except CompileInterrupted:
                raise
            except Exception as e:  # BCC raises bare Exception for compile and load errors
                failure = e
        if failure is not None:
            raise CompileError(f"BCC could not compile {program.name}: {_first_error(noise)}",
                               f"headers: {headers.path} ({headers.status})") from failure
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    loaded = Loaded(bpf, program)
    try:
        configure(loaded, program)
    except BaseException:
        loaded.close()
        raise
    return loaded


def configure(loaded, program: Program) -> None:
    """The run's settings into the program's config map, before any attach
    (either loader: both hand out maps with `map_fd`)."""
    if program.config:
        try:
            fd = loaded.map_fd(bpfsys.CONFIG_MAP)
        except KeyError:
            raise ValueError(f"{program.name} has settings but no config map") from None
        bpfsys.write_config(fd, program.config)


def export_object(loaded: Loaded, functions: list[str]) -> dict:
    """What BCC compiled, for progcache.py to load later without BCC: each
    function's instructions (their ld_imm64 already hold this process's map
    fds), the map fd of each table by name, the license and kernel version."""
    lib = _import_bcc().lib
    module = loaded.bpf.module
    lib.bpf_table_name.restype = ctypes.c_char_p
    tables = {lib.bpf_table_name(module, i).decode(): lib.bpf_table_fd_id(module, i)
              for i in range(lib.bpf_num_tables(module))}
    code = {}
    for fn in functions:
        start, size = lib.bpf_function_start(module, fn.encode()), \
            lib.bpf_function_size(module, fn.encode())
        if not start:
            raise KeyError(f"no function {fn} in {loaded.program.name}")
        code[fn] = ctypes.string_at(start, size)
    return {"code": code, "tables": tables, "license": lib.bpf_module_license(module).decode(),
            "kern_version": lib.bpf_module_kern_version(module)}

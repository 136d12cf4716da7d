"""`bpfprobes probe`: from parsed specs to a plan codegen and the CLI follow.

Two steps. `resolve` checks every spec against this kernel and machine before
anything is attached (mechanism present, symbol in kallsyms and not
blacklisted, BTF parameter names, tracepoint fields, uprobe binary and
symbol) and gathers the facts the plan needs. `assemble` is pure: it names
the events, types tracepoint fields, lays out payloads, pairs entry and
return probes for latency and splits the filter between kernel and
userspace. Unit tests call `assemble` with made-up facts for any arch.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from bpfprobes.base.errors import BpfprobesError, KernelError, UsageError
from bpfprobes.kernel import elfsym, features
from bpfprobes.kernel.arch import Abi
from bpfprobes.kernel.btf import BtfError
from bpfprobes.kernel.elfsym import Elf
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan import metricplan, probefilter, probelayout, tpformat, usdtplan
from bpfprobes.plan.probefilter import Expr, FieldInfo
from bpfprobes.plan.probelayout import PayloadLayout
from bpfprobes.plan.runconfig import RateLimit
from bpfprobes.plan.spec import (
    TYPES,
    ArgType,
    BtfParam,
    Deref,
    FetchArg,
    ProbeSpec,
    Retval,
    Sym,
    resolve_btf_params,
    validate_fields,
    why_not_one_word)

STACK_ENTRIES = 2048         # BPF_STACK_TRACE size: 2048 * 127 frames * 8 bytes = 2 MiB
# --folded: distinct stacks kept by their content (bpf_c/folded.h), 1 KiB each: 16 MiB
FOLDED_STACK_ENTRIES = 16384
PAIR_ENTRIES = 10240         # threads inside a timed function at once

# A uprobe or kprobe on the kernel's own entry symbol of a syscall has a tracepoint
# twin; used to point users of kernels without kprobes somewhere useful.
_SYSCALL_PREFIXES = ("__x64_sys_", "__arm64_sys_", "__riscv_sys_", "__s390x_sys_",
                     "__powerpc_sys_", "__se_sys_", "__do_sys_", "do_sys_", "ksys_", "sys_")


# ---------------------------------------------------------------- facts from the machine

@dataclass(frozen=True)
class Uprobe:
    """Where a uprobe lands, computed once (elfsym.Elf.place) for both backends."""
    path: str                # resolved path of the binary that was checked (shown to users)
    file_offset: int         # of SYM+OFFS: what uprobe_events takes
    vaddr: int               # the same place as BCC's attach_uprobe(addr=) takes it
    # what the kernel is given: /proc/self/fd/N of the checked file, held open
    # (elfsym.Elf.hold), so a directory of `path` swapped later cannot redirect it
    kernel_path: str = ""
    # a USDT site: its semaphore's file offset (0: none); None: not a USDT site
    ref_ctr: int | None = None
    at_entry: bool = False   # at a function's first byte: the caller's return address is
                             # at the stack pointer (or in the link register)
    # ...and whether a user stack taken there lacks it: CALLER_MISSING (surely),
    # CALLER_MAYBE (the kernel may have put it back: the stacks tell), "" (not at entry)
    caller: str = ""

    @property
    def target(self) -> str:
        """The path to hand the kernel (uprobe_events, BCC's attach_uprobe)."""
        return self.kernel_path or self.path


@dataclass
class Facts:
    """What `resolve` learned; `assemble` needs nothing else."""
    specs: list[ProbeSpec]                                        # BTF names resolved
    fields: dict[int, dict[str, tpformat.TpField]] = field(default_factory=dict)
    symbols: dict[str, int] = field(default_factory=dict)         # @SYM -> address
    returns: dict[int, ArgType] = field(default_factory=dict)     # kretprobe: BTF return type
    uprobes: dict[int, Uprobe] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)                # for -v / --dry-run
    warnings: list[str] = field(default_factory=list)             # always shown (--force)


def _kprobe_alternatives(k: Kernel, symbol: str) -> str:
    stem = next((symbol[len(p):] for p in _SYSCALL_PREFIXES if symbol.startswith(p)), symbol)
    for name in (stem, stem.rstrip("0123456789")):
        if k.tracepoint_exists("syscalls", f"sys_enter_{name}"):
            return (f"use the tracepoints instead, e.g. 't:syscalls:sys_enter_{name}' and "
                    f"'t:syscalls:sys_exit_{name} ret', or a uprobe on a user function "
                    "('p:/path/to/binary:function')")
    return ("use a tracepoint (t:SUBSYS:EVENT; see /sys/kernel/tracing/events) "
            "or a uprobe on a user function ('p:/path/to/binary:function')")


def _check_kprobe(k: Kernel, spec: ProbeSpec, dry_run: bool, notes: list[str]) -> None:
    need = "kretprobes" if spec.is_return else "kprobes"
    have = features.check(k, need)
    if not have.available:
        what = f"{need} are not available in this kernel ({have.why})"
        if not dry_run:
            raise KernelError(what, _kprobe_alternatives(k, spec.symbol))
        notes.append(f"note: {what}: this program would not attach here")
    if not k.kallsyms.exists(spec.symbol, spec.module):
        where = f"module {spec.module}" if spec.module else "/proc/kallsyms"
        close = k.kallsyms.match(f"*{spec.symbol}*", limit=5)
        if spec.module and not k.kallsyms.exists(spec.symbol):
            hint = f"is module {spec.module} loaded? (lsmod)"
        elif spec.module:
            hint = "it is in: " + ", ".join(sorted(m or "vmlinux" for m in
                                                   k.kallsyms.modules_of(spec.symbol)))
        else:
            hint = ("similar: " + ", ".join(close)) if close else \
                "it may be inlined or static and optimised away; check /proc/kallsyms"
        raise KernelError(f"{spec.symbol} is not a kernel function in {where}", hint)
    if spec.symbol in k.kprobe_blacklist:
        raise KernelError(f"{spec.symbol} is in the kernel's kprobe blacklist "
                          "(probing it could recurse or crash the kernel)",
                          "probe its caller, or a tracepoint near it")


def _kprobe_offset_problem(k: Kernel, spec: ProbeSpec) -> str | None:
    """SYM+OFFS past SYM's end (the next kallsyms symbol), where that can be seen.
    Whether OFFS starts an instruction the kernel checks itself (x86 decodes it)."""
    if not spec.offset or not k.kallsyms.addresses_visible():
        return None
    syms = k.kallsyms.find(spec.symbol, spec.module)
    if len(syms) != 1:
        return None                          # ambiguous or absent: said elsewhere
    hit = k.kallsyms.resolve(syms[0].addr + spec.offset)
    if hit is None or hit[0].addr == syms[0].addr:
        return None
    return (f"{spec.symbol}+{spec.offset:#x} is past the end of {spec.symbol}: "
            f"it is {hit[0].name}+{hit[1]:#x}")


_BOUNDARY_HINT = ("a breakpoint that is not on an instruction's first byte corrupts the "
                  "traced program; pick one (objdump -d), or --force")


def _refuse_or_warn(problem: str | None, force: bool, warnings: list[str],
                    hint: str = _BOUNDARY_HINT) -> None:
    """A place that may harm the traced code: refused, or with --force a warning."""
    if problem is None:
        return
    if not force:
        raise UsageError(f"{problem}: refusing to probe there", hint)
    warnings.append(f"warning: {problem}; probing there anyway (--force)")


def _btf_lookup(k: Kernel):
    def lookup(func: str):
        try:
            return k.btf.func_params(func)          # type: ignore[union-attr]
        except BtfError as e:
            raise UsageError(f"no BTF description of {func}(): {e}",
                             "name arguments by register or $argN instead") from e
    return lookup


def _no_data_symbols_hint(k: Kernel) -> tuple[str, ...]:
    """Why a variable is missing where kallsyms lists no data at all (Debian's arm64
    kernels: CONFIG_KALLSYMS_ALL off): @SYM can name functions only there."""
    if k.kallsyms.lists_variables():
        return ()
    return ("this kernel's kallsyms lists functions only (CONFIG_KALLSYMS_ALL is not set): "
            "@SYM cannot name a variable here",)


def btf_return_type(k: Kernel, func: str) -> ArgType | None:
    """The type $retval has by default: the function's return type from BTF
    (int -> s32, pointer -> x64), None if unknown or void."""
    if k.btf is None:
        return None
    try:
        ret = k.btf.func_return(func)
    except (BtfError, IndexError, KeyError):
        return None
    if ret is None:
        return None
    size, pointer, signed = ret
    if pointer:
        return TYPES[f"x{size * 8}"]
    bits = {1: 8, 2: 16, 4: 32, 8: 64}.get(size)
    return TYPES[f"{'s' if signed else 'u'}{bits}"] if bits else None


def _check_tracepoint(k: Kernel, spec: ProbeSpec, dry_run: bool,
                      notes: list[str]) -> dict[str, tpformat.TpField]:
    have = features.check(k, "tracepoints")
    if not have.available and not dry_run:
        raise KernelError(f"tracepoints are not available ({have.why})",
                          "mount tracefs: mount -t tracefs nodev /sys/kernel/tracing")
    text = k.tracepoint_format(spec.group, spec.event)
    if text is None:
        similar = []
        if k.tracefs is not None:
            similar = sorted(p.parent.name + ":" + p.name for p in
                             (k.tracefs / "events").glob(f"*/*{spec.event[-12:]}*"))[:5]
        raise KernelError(f"tracepoint {spec.group}:{spec.event} does not exist in this kernel",
                          ("similar: " + ", ".join(similar)) if similar else
                          "list them with: ls /sys/kernel/tracing/events/*")
    fields = tpformat.parse(text)
    validate_fields(spec, set(fields))
    return fields


def _same_file_for(pid: int | None, elf: Elf) -> None:
    """With -p, the process must run the file checked (the probe is on that inode: in
    another mount namespace PATH may be another file, which would never hit it)."""
    if pid is None:
        return
    try:
        st = os.stat(f"/proc/{pid}/root{elf.path}")
    except OSError:
        return                              # no such process: the pid filter says so later
    if (st.st_dev, st.st_ino) != elf.dev_ino:
        raise BpfprobesError(f"process {pid} sees another file at {elf.path} (another mount "
                             "namespace): the probe would not be in the binary it runs",
                             "trace it without -p, or from inside its namespace")


# x86's first instructions after which newer kernels (6.11, and stable kernels it was
# backported to: Debian's 6.1 has it) put the caller back into a user stack taken in
# a uprobe themselves (push %rbp, endbr64); elsewhere the walk always leaves it out
_KERNEL_MAY_ADD_CALLER_AFTER = (b"\x55", b"\xf3\x0f\x1e\xfa")
CALLER_MISSING, CALLER_MAYBE = "missing", "maybe"


def caller_rule(k: Kernel, elf: Elf, place) -> str:
    """Whether a user stack taken at `place` (a function's first byte) lacks the caller:
    a frame-pointer walk starts from the caller's frame there. After push %rbp or
    endbr64 on x86 a kernel may have put it back, and no version says which (stable
    backports): the stacks themselves tell (present.probefmt.CallerRule)."""
    if k.abi.name == "x86_64" and elf.code(place.vaddr, 4).startswith(
            _KERNEL_MAY_ADD_CALLER_AFTER):
        return CALLER_MAYBE
    return CALLER_MISSING


def _check_uprobe(k: Kernel, spec: ProbeSpec, dry_run: bool, notes: list[str],
                  force: bool = False, warnings: list[str] | None = None,
                  pid: int | None = None) -> list[tuple[ProbeSpec, Uprobe]]:
    """Resolve the binary's path once, read that file (regular, ELF, this kernel's
    machine), place SYM+OFFS or the file offset, and check it starts an instruction.
    A USDT spec becomes one uprobe per site of its probe (each a compiler's nop)."""
    warnings = [] if warnings is None else warnings
    have = features.check(k, "uprobes")
    if not have.available and not dry_run:
        raise KernelError(f"uprobes are not available in this kernel ({have.why})")
    # followed by the kernel: /proc/PID/root and map_files links lead where realpath cannot
    if not os.path.exists(spec.path or ""):
        raise BpfprobesError(f"uprobe target {spec.path}: no such file",
                             "give the binary's path, e.g. /usr/bin/bash or "
                             "/lib/x86_64-linux-gnu/libc.so.6")
    with Elf(spec.path or "") as elf:
        if elf.machine not in (k.abi.elf_machine, *k.abi.compat_elf_machines):
            _refuse_or_warn(f"{spec.path} holds {elf.machine_name} code and this kernel is "
                            f"{k.abi.name}", force, warnings,
                            f"its breakpoint would be {k.abi.name}'s; --force to try anyway")
        if spec.usdt is not None:
            placed = [(site.spec, elf.place_file_offset(site.file_offset), site.semaphore,
                       False, "") for site in usdtplan.sites(elf, spec, k.abi, notes)]
            for _s, place, _r, _e, _m in placed:     # a compiler's nop, or refused
                _refuse_or_warn(usdtplan.not_a_nop(elf, place, k.abi), force, warnings)
        else:
            if spec.symbol:
                place = elf.place(spec.symbol, spec.offset)
                if place.symbol is not None and place.symbol.kind == "ifunc":
                    notes.append(f"note: {spec.symbol} in {elf.path} is an IFUNC: the probe is "
                                 "on its resolver, not on the implementation chosen at run time")
            else:                                             # PATH:0xOFFSET is a file offset
                place = elf.place_file_offset(spec.offset)
            _refuse_or_warn(elfsym.boundary_problem(elf, place, spec.is_return), force,
                            warnings)
            # by symbol or by file offset: where it landed decides (issue 14 review, 4)
            entry = not spec.is_return and place.symbol is not None and place.offset == 0
            placed = [(spec, place, None, entry, caller_rule(k, elf, place) if entry else "")]
        _same_file_for(pid, elf)
        held = elf.hold()               # the kernel gets this very inode (issue 11, F1)
    why = why_not_one_word(elf.path)
    if why is not None:                  # a symlink's target the kernel could not take
        raise UsageError(f"{spec.path} resolves to {elf.path!r}, which {why}",
                         "probe a copy of the binary with a plain name")
    if elf.path != os.path.abspath(spec.path or ""):
        notes.append(f"note: {spec.path} is {elf.path}: the probe goes on that file")
    return [(replace(s, path=elf.path),
             Uprobe(elf.path, p.file_offset, p.vaddr, held, ref, entry, rule if entry else ""))
            for s, p, ref, entry, rule in placed]


def _has_btf_param(node) -> bool:
    return isinstance(node, BtfParam) or (isinstance(node, Deref) and _has_btf_param(node.inner))


def _syms(node) -> list[Sym]:
    if isinstance(node, Sym):
        return [node]
    if isinstance(node, Deref):
        return _syms(node.inner)
    return []


def kernel_symbol_address(k: Kernel, name: str) -> int | None:
    """Address of any kallsyms symbol (data too: @SYM reads globals), vmlinux first."""
    m = re.search(rb"^([0-9a-f]+) [A-Za-z] " + re.escape(name.encode()) + rb"$",
                  k.kallsyms.raw, re.M)
    return int(m.group(1), 16) if m else None


def resolve(specs: Sequence[ProbeSpec], k: Kernel, dry_run: bool = False,
            force: bool = False, pid: int | None = None) -> Facts:
    """Check every spec on this machine; raises before anything is attached.
    A uprobe's spec comes back with the resolved path of the binary that was
    checked, so every backend names that same file to the kernel. `force`: a
    place that may not start an instruction is a warning, not an error. `pid`:
    the -p filter (BCC then reads the binary through /proc/PID/root)."""
    facts = Facts([])
    for spec in specs:
        i = len(facts.specs)                # a USDT spec adds one spec per site
        if spec.kind in ("kprobe", "kretprobe"):
            _check_kprobe(k, spec, dry_run, facts.notes)
            _refuse_or_warn(_kprobe_offset_problem(k, spec), force, facts.warnings)
            if any(_has_btf_param(a.fetch) for a in spec.args):
                if k.btf is None:
                    raise UsageError("parameter names need the kernel's BTF "
                                     "(/sys/kernel/btf/vmlinux), which this kernel lacks",
                                     "use $argN or %REG")
            spec = resolve_btf_params(spec, _btf_lookup(k), k.abi)
            if spec.is_return and k.btf is not None:
                ret = btf_return_type(k, spec.symbol)
                if ret is not None:
                    facts.returns[i] = ret
        elif spec.kind == "tracepoint":
            facts.fields[i] = _check_tracepoint(k, spec, dry_run, facts.notes)
        else:
            sites = _check_uprobe(k, spec, dry_run, facts.notes, force, facts.warnings, pid)
            for n, (site, up) in enumerate(sites[:-1]):
                facts.uprobes[i + n] = up
                facts.specs.append(site)
            spec, facts.uprobes[len(facts.specs)] = sites[-1]
        for a in spec.args:
            for s in _syms(a.fetch):
                addr = kernel_symbol_address(k, s.name)
                if addr is None:
                    raise KernelError(f"@{s.name}: no such symbol in /proc/kallsyms",
                                      *_no_data_symbols_hint(k))
                if addr == 0 and not dry_run:
                    raise KernelError(f"@{s.name}: /proc/kallsyms hides addresses from us",
                                      "run as root (kptr_restrict)")
                facts.symbols[s.name] = addr
        facts.specs.append(spec)
    return facts


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Probe:
    index: int
    spec: ProbeSpec
    event: str                                  # unique among the plan's probes
    layout: PayloadLayout
    fields: Mapping[str, tpformat.TpField]      # tracepoint argument name -> format field
    stash: int | None = None                    # entry probe: records its time for `pair`
    pair: int | None = None                     # return probe: latency from this pair's entry
    kernel_filter: Expr | None = None
    user_filter: Expr | None = None             # the whole filter, when the kernel's is not exact
    uprobe: Uprobe | None = None

    @property
    def fn(self) -> str:
        return f"probe_{self.index}"

    @property
    def where(self) -> str:
        """func+0xOFF as ftrace shows the probed location."""
        s = self.spec
        if s.kind == "tracepoint":
            return f"{s.group}:{s.event}"
        if not s.symbol:
            return f"{os.path.basename(s.path or '')}+{s.offset:#x}"
        mod = f" [{s.module}]" if s.module else ""
        return f"{s.symbol}+{s.offset:#x}{mod}" if not s.is_return else s.symbol + mod


@dataclass(frozen=True)
class Stash:
    """A hidden entry probe that only records the time, for `r:` with --latency."""
    pair: int
    spec: ProbeSpec          # the return probe it serves (attached as its entry twin)
    uprobe: Uprobe | None = None

    @property
    def fn(self) -> str:
        return f"stash_{self.pair}"


@dataclass(frozen=True)
class Options:
    string_size: int = probelayout.DEFAULT_STRING_SIZE
    kstack: bool = False
    ustack: bool = False
    latency: bool = False
    pid: int | None = None
    tid: int | None = None
    comm: str | None = None
    skip_pid: int | None = None
    filter: Expr | None = None
    context: dict | None = None       # --context: tracectx.preempt_defines() (may be empty)
    rate_limit: RateLimit | None = None     # --rate-limit
    metrics: metricplan.Options | None = None   # count in the kernel, send no events
    # --folded: where the kernel keeps a process's identity (probe.h probe_space_of,
    # from BTF), and the stack hash's seed (per run: stacks an attacker shapes cannot
    # be made to collide with another's)
    task_offsets: tuple = ()
    folded_seed: int = 0


@dataclass(frozen=True)
class Plan:
    probes: tuple[Probe, ...]
    stashes: tuple[Stash, ...]
    options: Options
    symbols: Mapping[str, int]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()            # printed to stderr whatever the options
    metric_labels: tuple[metricplan.ProbeLabels, ...] = ()     # with options.metrics

    @property
    def pairs(self) -> int:
        return len({p.pair for p in self.probes if p.pair is not None})


def _unique_events(specs: Sequence[ProbeSpec]) -> list[str]:
    """Event names as given, made unique (p: and r: on one function share a default);
    the sites of one USDT spec are one event."""
    out: list[str] = []
    for j, s in enumerate(specs):
        if s.usdt is not None and j and specs[j - 1].usdt is not None \
                and specs[j - 1].text == s.text:
            out.append(out[-1])
            continue
        name = s.event + ("__return" if s.is_return and s.event in out else "")
        n = 2
        base = name
        while name in out:
            name, n = f"{base}_{n}", n + 1
        out.append(name)
    return out


def _type_fields(spec: ProbeSpec, fields: Mapping[str, tpformat.TpField],
                 abi: Abi) -> tuple[ProbeSpec, dict[str, tpformat.TpField], dict[str, int]]:
    """Tracepoint arguments get their format-file type unless the user gave one."""
    args, used, caps = [], {}, {}
    for a in spec.args:
        f = fields[a.fetch.name]                                  # type: ignore[union-attr]
        t = a.type if a.explicit_type else f.default_type(abi.pointer_size * 8)
        if t.is_string and not (f.pointer or f.is_char_array):
            raise UsageError(f"field {f.name} ({f.c_type}) holds no string",
                             "strings come from char arrays or char pointers")
        if not t.is_string and t.kind != "symbol" and t.bits // 8 > f.size:
            raise UsageError(f"field {f.name} has {f.size} bytes; {a.name}:{t} reads {t.bits // 8}",
                             f"use u{f.size * 8} or s{f.size * 8}")
        if t.is_string and f.array:
            caps[a.name] = f.array
        args.append(replace(a, type=t))
        used[a.name] = f
    return replace(spec, args=tuple(args)), used, caps


def _default_retval(spec: ProbeSpec, abi: Abi, btf_type: ArgType | None) -> ProbeSpec:
    """$retval without a type: the BTF return type if known, else a signed long, so
    -ENOENT reads as -2 (the kernel's default would print hex)."""
    default = btf_type or TYPES[f"s{abi.pointer_size * 8}"]
    args = tuple(replace(a, type=default) if isinstance(a.fetch, Retval) and not a.explicit_type
                 else a for a in spec.args)
    return replace(spec, args=args)


def _pair_key(spec: ProbeSpec, up: Uprobe | None) -> tuple | None:
    if spec.kind == "tracepoint" or (spec.offset and not spec.is_return):
        return None
    if up is not None:
        return ("user", up.path, spec.symbol or up.file_offset)
    return ("kernel", spec.module, spec.symbol)


def _field_infos(probe_args: Sequence[FetchArg], layout: PayloadLayout,
                 has_latency: bool) -> dict[str, FieldInfo]:
    out = {s.name: FieldInfo("str" if s.is_string else "int", s.size) for s in layout.slots}
    # the builtins win over arguments of the same name (kernel and userspace agree)
    out.update({n: FieldInfo(k, 16 if k == "str" else 0) for n, k in probefilter.BUILTINS.items()
                if n != "latency_ns" or has_latency})
    return out


def _bind_filter(expr: Expr, infos: dict[str, FieldInfo]) -> tuple[Expr | None, Expr | None]:
    probefilter.check(expr, infos)
    kernel, exact = probefilter.split(expr, lambda c: probefilter.kernel_ok(c, infos[c.name]))
    return kernel, (None if exact else expr)


def assemble(facts: Facts, options: Options, abi: Abi) -> Plan:
    """The plan for resolved specs (pure: no kernel access)."""
    specs = [_default_retval(s, abi, facts.returns.get(i)) for i, s in enumerate(facts.specs)]
    events = _unique_events(specs)
    keys = [_pair_key(s, facts.uprobes.get(i)) for i, s in enumerate(specs)]
    entry_keys = {k for k, s in zip(keys, specs) if k is not None and not s.is_return}
    return_keys = {k for k, s in zip(keys, specs) if k is not None and s.is_return}
    wanted = return_keys & entry_keys if not options.latency else return_keys
    pair_ids = {k: n for n, k in enumerate(sorted(wanted, key=repr))}

    probes: list[Probe] = []
    stashes: list[Stash] = []
    for i, spec in enumerate(specs):
        fields: dict[str, tpformat.TpField] = {}
        caps: dict[str, int] = {}
        if spec.kind == "tracepoint":
            spec, fields, caps = _type_fields(spec, facts.fields[i], abi)
        layout = probelayout.layout(spec.args, options.string_size, caps)
        key = keys[i]
        pair = pair_ids.get(key) if spec.is_return else None
        stash = pair_ids.get(key) if not spec.is_return else None
        probes.append(Probe(i, spec, events[i], layout, fields, stash, pair,
                            uprobe=facts.uprobes.get(i)))
    for key, pid_ in pair_ids.items():
        if key not in entry_keys:
            ret = next(p for p in probes if p.pair == pid_)
            stashes.append(Stash(pid_, ret.spec, ret.uprobe))
    if options.filter is not None:
        probes = _filtered(probes, options.filter)
    labels = metricplan.bind(probes, options.metrics) if options.metrics is not None else ()
    return Plan(tuple(probes), tuple(stashes), options, dict(facts.symbols), tuple(facts.notes),
                tuple(facts.warnings), labels)


def with_metrics(plan: Plan, metrics: metricplan.Options) -> Plan:
    """The plan counting in the kernel (metrics mode), its labels bound to its probes."""
    return replace(plan, options=replace(plan.options, metrics=metrics),
                   metric_labels=metricplan.bind(plan.probes, metrics))


def _filtered(probes: list[Probe], expr: Expr) -> list[Probe]:
    wanted = probefilter.names(expr)
    out, bound = [], 0
    for p in probes:
        infos = _field_infos(p.spec.args, p.layout, p.pair is not None)
        if not wanted <= set(infos):
            out.append(p)              # a probe without the named fields is not filtered
            continue
        kernel, user = _bind_filter(expr, infos)
        out.append(replace(p, kernel_filter=kernel, user_filter=user))
        bound += 1
    if not bound:
        have = sorted({n for p in probes for n in _field_infos(p.spec.args, p.layout,
                                                                p.pair is not None)})
        raise UsageError("the filter names " + ", ".join(sorted(wanted)) +
                         ", which no probe captures", "fields: " + ", ".join(have))
    return out

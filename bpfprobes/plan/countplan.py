"""What `bpfprobes count` attaches: patterns with wildcards to a bounded list of targets.

    vfs_*  or  p:vfs_*          kernel functions (kprobes), from kallsyms
    t:syscalls:sys_enter_open*  tracepoints, from tracefs
    p:/usr/bin/bash:read*       functions of a binary (uprobes), from its ELF symbols;
    p:bash:read*, libc:malloc   the binary by name (kernel/binaries.py), ./a.out:f* too

A wildcard can match thousands of kernel functions, and each kprobe costs on
every call: more than `limit` targets is refused unless forced. Kernel names
that cannot be kprobed are left out before counting (the kprobe blacklist,
compiler clones such as foo.isra.0, the __pfx_ padding symbols).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Callable

from bpfprobes.base.errors import KernelError, UsageError
from bpfprobes.kernel import binaries, features, usdtnotes
from bpfprobes.kernel.elfsym import Elf
from bpfprobes.kernel.kallsyms import Wildcard
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan import usdtplan
from bpfprobes.plan.attach import Attach

COOKIE_FN, MULTI_FN = "count_cookie", "count_multi"     # bpf_c/count.bpf.c

DEFAULT_LIMIT = 1000          # as funccount: beyond this, a per-call cost nobody meant
_NOT_PROBEABLE = re.compile(r"^__pfx_|\.")      # padding symbols, compiler clones (.isra, .cold)


# --by: what a count is kept per besides the target, as the program's defines
BY = {"pid": ("COUNT_BY_PID",), "comm": ("COUNT_BY_COMM",),
      "pid,comm": ("COUNT_BY_PID", "COUNT_BY_COMM")}


@dataclass(frozen=True)
class Target:
    kind: str                 # kprobe | tracepoint | uprobe
    name: str                 # what the table shows: function, CAT:EVENT, or PATH:FUNC
    attach: Attach


def _split(pattern: str, binary: Callable[[str], str | None]) -> tuple[str, str]:
    """('kprobe'|'tracepoint'|'uprobe', rest): a path (absolute or relative) or a
    binary by name (`bash:read*`, `libc:malloc`: kernel/binaries.py's rule) is a
    user function; a kernel module's name stays a kernel one."""
    if pattern.startswith("t:"):
        return "tracepoint", pattern[2:]
    if pattern.startswith("u:"):
        head, sep, probes = pattern[2:].partition(":")
        path = head if "/" in head else binary(head) if head else None
        if not sep or not probes or path is None:
            raise UsageError(f"bad pattern {pattern!r}", "a USDT probe is u:BINARY:[PROVIDER:]"
                             "NAME*, e.g. u:/usr/bin/python3.11:python:gc__*")
        return "usdt", f"{os.path.abspath(path)}:{probes}"
    body = pattern[2:] if pattern.startswith("p:") else pattern
    head, sep, func = body.rpartition(":")
    if "/" in head:
        return "uprobe", f"{os.path.abspath(head)}:{func}"
    if sep and head:
        path = binary(head)
        if path:
            return "uprobe", f"{path}:{func}"
    if not body or sep and not head.replace("-", "_").isidentifier():
        raise UsageError(f"bad pattern {pattern!r}",
                         "forms: FUNC*, MOD:FUNC*, t:CAT:EVENT*, p:PATH:FUNC*, p:NAME:FUNC* "
                         "(a program or library by name: bash:read*, libc:malloc)")
    return "kprobe", body


def _traceable_functions(k: Kernel) -> set[str] | None:
    """What ftrace can attach to (available_filter_functions), where tracefs says:
    kallsyms also lists __init code long freed and functions marked notrace."""
    path = k.tracefs / "available_filter_functions" if k.tracefs else None
    if path is None or not path.exists():
        return None
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def _kprobes(k: Kernel, body: str) -> list[Target]:
    if not features.check(k, "kprobes").available:
        raise KernelError(f"cannot count kernel functions: {features.check(k, 'kprobes').why}",
                          "count tracepoints (t:CAT:EVENT) or user functions (p:/PATH:FUNC)")
    module, _, func = body.rpartition(":")
    traceable = _traceable_functions(k)
    names = [n for n in k.kallsyms.match(func) if not _NOT_PROBEABLE.search(n)
             and n not in k.kprobe_blacklist
             and (traceable is None or n in traceable)
             and (not module or k.kallsyms.exists(n, module))]
    return [Target("kprobe", n, Attach("kprobe", n, "")) for n in names]


def _tracepoints(k: Kernel, body: str) -> list[Target]:
    cat, sep, event = body.partition(":")
    if not sep or not event:
        raise UsageError(f"t:{body}: a tracepoint is t:CATEGORY:EVENT", "e.g. t:sched:sched_*")
    root = k.tracefs
    if root is None:
        raise KernelError("tracefs is not mounted", "mount -t tracefs nodev /sys/kernel/tracing")
    cats, events = Wildcard(cat), Wildcard(event)
    found = sorted(f"{c.name}:{e.name}" for c in (root / "events").iterdir()
                   if c.is_dir() and cats.match(c.name)
                   for e in c.iterdir() if events.match(e.name) and (e / "format").exists())
    return [Target("tracepoint", t, Attach("tracepoint", t, "")) for t in found]


def _uprobes(body: str) -> list[Target]:
    path, sep, func = body.rpartition(":")
    if not sep or not path:
        raise UsageError(f"p:{body}: a user function is p:/PATH:FUNC", "e.g. p:/bin/bash:read*")
    with Elf(path) as elf:                       # ElfError names the path and the reason
        # only the names the wildcard matches are indexed (bounded: elfsym.MAX_INDEXED);
        # a name meaning two places (two static functions) or no code is skipped
        places = elf.functions_matching(Wildcard(func).match)
        held = elf.hold()                        # the kernel gets the checked inode (F1)
    # each at the address read from the resolved file (what probe does, elfsym.place)
    return [Target("uprobe", f"{path}:{n}", Attach("uprobe", "", "", path=p.path, offset=p.vaddr,
                                                   kernel_path=held))
            for n, p in places.items()]


def _usdt(k: Kernel, body: str) -> list[Target]:
    """Each site of each USDT probe the wildcards match (PROVIDER:NAME, or NAME of
    any provider), shown as PROVIDER:NAME (the sites of one probe are one row)."""
    path, probes = body.split(":", 1)
    provider, _, name = probes.rpartition(":")
    want_provider, want_name = Wildcard(provider or "*"), Wildcard(name)
    with Elf(path) as elf:
        found = [(s, elf.place_file_offset(s.file_offset)) for s in usdtnotes.sites(elf)
                 if want_provider.match(s.provider) and want_name.match(s.name)]
        for s, p in found:
            problem = usdtplan.not_a_nop(elf, p, k.abi)
            if problem is not None:
                raise UsageError(problem)
        held = elf.hold()
    # PATH:PROVIDER:NAME, as p: rows are PATH:FUNC: two binaries' probes stay apart
    return [Target("uprobe", f"{path}:{s.full_name}",
                   Attach("uprobe", "", "", path=p.path, offset=p.vaddr, kernel_path=held,
                          ref_ctr=usdtplan.semaphore_offset(s, path), file_offset=s.file_offset))
            for s, p in found]


def expand(k: Kernel, patterns: list[str], limit: int = DEFAULT_LIMIT,
           force: bool = False, pid: int | None = None) -> list[Target]:
    """Every target the patterns name, each once, in order; the count function of
    target i is count_i (codegen.count_program)."""
    out: list[Target] = []
    seen: set[tuple[str, str]] = set()
    names = binaries.Resolver(pid=pid)
    for pattern in patterns:
        kind, body = _split(pattern, names)
        found = {"kprobe": lambda: _kprobes(k, body), "tracepoint": lambda: _tracepoints(k, body),
                 "uprobe": lambda: _uprobes(body), "usdt": lambda: _usdt(k, body)}[kind]()
        if not found:
            raise UsageError(f"{pattern!r} matches nothing that can be traced",
                             "kernel functions are listed in /proc/kallsyms")
        for t in found:             # a USDT probe's sites: one name, several places
            key = (t.kind, t.name, t.attach.path, t.attach.offset)
            if key not in seen:
                seen.add(key)
                out.append(t)
    if len(out) > limit and not force:
        raise UsageError(f"{len(out)} targets match, more than {limit}: each one costs on every "
                         f"call", "narrow the pattern, or --force (and --limit N)")
    return [Target(t.kind, t.name, replace(t.attach, fn=f"count_{i}",
                                           pid=pid if t.kind == "uprobe" and pid else -1))
            for i, t in enumerate(out)]


@dataclass(frozen=True)
class Attaching:
    attaches: list[Attach]
    counters: list[int]         # targets with a function of their own (count_i)


def attaching(k: Kernel, targets: list[Target]) -> Attaching:
    """What to attach for `expand`'s targets. Kernel functions share one program
    that tells them apart by attach cookie (their index): all through one
    kprobe_multi link where the kernel has them (5.18+ with CONFIG_FPROBE), else
    a link each (5.15+), so that a thousand functions take a descriptor each, or
    one in all, instead of a program and an event each. Older kernels, and every
    other kind of target, keep a function per target."""
    cookies = any(t.kind == "kprobe" for t in targets) \
        and features.check(k, "attach_cookies").available
    shared = [(i, t) for i, t in enumerate(targets) if cookies and t.kind == "kprobe"]
    # a name kallsyms lists more than once: a probe at each of its addresses, one cookie
    repeated = k.kallsyms.repeated([t.attach.target for _, t in shared]) if shared else {}
    by_name = [replace(t.attach, fn=COOKIE_FN, cookie=i) for i, t in shared
               if t.attach.target not in repeated]
    by_addr = [Attach("kprobe", "", COOKIE_FN, offset=addr, cookie=i) for i, t in shared
               for addr in repeated.get(t.attach.target, ())]
    rest = [t.attach for t in targets if not (cookies and t.kind == "kprobe")]
    counters = [i for i, t in enumerate(targets) if not (cookies and t.kind == "kprobe")]
    if len(by_name) + len(by_addr) > 1 and features.check(k, "kprobe_multi").available:
        # one link takes names or addresses, not both
        links = [Attach("kprobe_multi", "", MULTI_FN, members=tuple(group))
                 for group in (by_name, by_addr) if group]
        return Attaching([*links, *rest], counters)
    return Attaching([*by_name, *by_addr, *rest], counters)


def sharing(attached: list[Attach]) -> str:
    """How kernel functions were attached in the end (the meta's `attach`): the
    kernel may refuse one kprobe_multi link, and each is then attached alone."""
    if any(a.kind == "kprobe_multi" for a in attached):
        return "one kprobe_multi link"
    if any(a.cookie is not None for a in attached):
        return "a link per function, one program"
    return "a program per target"

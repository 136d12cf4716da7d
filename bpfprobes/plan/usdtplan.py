"""A `u:BINARY:[PROVIDER:]NAME` spec made concrete from the binary's USDT notes: one
uprobe spec per site of the probe (a probe the compiler copied has several), at the
site's file offset, with `$argN` replaced by where that site keeps its N-th argument
(plan/usdtargs.py) and the semaphore to count up, if the probe has one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from bpfprobes.base.errors import BpfprobesError, UsageError
from bpfprobes.kernel import usdtnotes
from bpfprobes.kernel.arch import Abi
from bpfprobes.kernel.elfsym import Elf
from bpfprobes.plan import usdtargs
from bpfprobes.plan.spec import Arg, Deref, FetchArg, Node, ProbeSpec

MAX_SITES = 256                  # sites of one probe attached (libjvm's most copied: ~60)
# what <sys/sdt.h> puts at a site: a probe elsewhere would be a breakpoint inside an
# instruction, or on one the program needs (a crafted or corrupted note)
NOPS = {"x86_64": (b"\x90", b"\x0f\x1f"), "aarch64": (b"\x1f\x20\x03\xd5",)}
MAX_SEMAPHORE_OFFSET = 2**32 - 1  # the uprobe PMU's ref_ctr_offset field is 32 bits


@dataclass(frozen=True)
class Site:
    spec: ProbeSpec              # a uprobe spec at PATH:0xOFFSET, its arguments located
    file_offset: int
    semaphore: int               # file offset of the semaphore, 0: none


def _matching(sites: list[usdtnotes.Site], wanted: str, path: str) -> list[usdtnotes.Site]:
    provider, _, name = wanted.partition(":")
    hits = [s for s in sites if s.name == name and provider in ("", s.provider)]
    if not hits:
        known = sorted({s.full_name for s in sites})
        raise BpfprobesError(f"no USDT probe {wanted.lstrip(':')} in {path}",
                             ("it has: " + ", ".join(known[:12]) +
                              (" ..." if len(known) > 12 else "")) if known
                             else "it has no USDT notes (.note.stapsdt)")
    providers = sorted({s.provider for s in hits})
    if len(providers) > 1:
        raise UsageError(f"{name} is a probe of {len(providers)} providers in {path}: "
                         + ", ".join(providers), f"name one: u:{path}:{providers[0]}:{name}")
    if len(hits) > MAX_SITES:
        raise UsageError(f"{wanted.lstrip(':')} has {len(hits)} sites in {path}, more than "
                         f"{MAX_SITES}", "probe a few of them by p:PATH:0xOFFSET")
    return hits


def _located(node: Node, where: list[tuple[Node, object]], site: str) -> Node:
    """`node` with each $argN replaced by the site's location of argument N."""
    if isinstance(node, Arg):
        if node.index > len(where):
            raise UsageError(f"$arg{node.index}: {site} has {len(where)} arguments")
        return where[node.index - 1][0]
    if isinstance(node, Deref):
        return replace(node, inner=_located(node.inner, where, site))
    return node


def _args(spec: ProbeSpec, site: usdtnotes.Site, abi: Abi,
          notes: list[str]) -> tuple[FetchArg, ...]:
    label = f"{site.full_name} at {site.file_offset:#x}"
    if not spec.args:                  # none given: every argument the site has, typed
        out = []
        for i, text in enumerate(site.args, 1):
            try:
                node, t = usdtargs.location(text, abi, f"{label}, argument {i}")
            except UsageError as e:
                notes.append(f"note: {e.what}: left out")
                continue
            out.append(FetchArg(f"arg{i}", node, t))
        return tuple(out)
    where: list[tuple[Node, object]] = []
    for i, text in enumerate(site.args, 1):
        try:
            where.append(usdtargs.location(text, abi, f"{label}, argument {i}"))
        except UsageError as e:
            where.append((_Unreadable(str(e.what)), None))      # an error only if used
    out = []
    for a in spec.args:
        node = _located(a.fetch, where, label)
        bad = _unreadable(node)
        if bad is not None:
            raise UsageError(bad)
        plain = isinstance(a.fetch, Arg) and not a.explicit_type
        t = where[a.fetch.index - 1][1] if plain else a.type     # type: ignore[union-attr]
        out.append(replace(a, fetch=node, type=t))
    return tuple(out)


@dataclass(frozen=True)
class _Unreadable:
    why: str


def _unreadable(node) -> str | None:
    if isinstance(node, _Unreadable):
        return node.why
    return _unreadable(node.inner) if isinstance(node, Deref) else None


def not_a_nop(elf: Elf, place, abi: Abi) -> str | None:
    """Why a site is no place for a breakpoint (not the nop sdt.h puts there), or None."""
    nops = NOPS.get(abi.name)
    if nops is None or elf.code(place.vaddr, 4).startswith(nops):
        return None
    return (f"the USDT site at file offset {place.file_offset:#x} in {elf.given} is not the "
            "nop <sys/sdt.h> puts there (a corrupted or crafted note): refusing to probe there")


def semaphore_offset(site: usdtnotes.Site, path: str) -> int:
    """The file offset a uprobe's reference counter takes for the site's semaphore."""
    if site.semaphore is None:
        raise BpfprobesError(f"{site.full_name} in {path}: its semaphore is not in the file "
                             "(.bss, or outside every segment): the kernel cannot raise it, "
                             "and the probe would never fire",
                             "rebuild with the semaphores in .probes (sdt.h's own section)")
    if site.semaphore > MAX_SEMAPHORE_OFFSET:
        raise BpfprobesError(f"{site.full_name} in {path}: its semaphore's file offset "
                             f"{site.semaphore:#x} is past what a uprobe's reference counter "
                             "can name (4 GiB)")
    return site.semaphore


def sites(elf: Elf, spec: ProbeSpec, abi: Abi, notes: list[str]) -> list[Site]:
    """The probe's sites in `elf`, each a located uprobe spec."""
    found = _matching(usdtnotes.sites(elf), spec.usdt or "", elf.given)
    out = [Site(replace(spec, offset=s.file_offset, args=_args(spec, s, abi, notes)),
                s.file_offset, semaphore_offset(s, elf.given)) for s in found]
    sem = {s.semaphore for s in found if s.semaphore}
    notes.append(f"{found[0].full_name}: {len(found)} site{'s' * (len(found) != 1)} in "
                 f"{elf.path}" + (f", semaphore at file offset {min(sem):#x} (counted up "
                                  "while attached)" if sem else ", no semaphore"))
    return out

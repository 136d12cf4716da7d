"""Kernel symbols from /proc/kallsyms: existence, modules, wildcards, addr -> sym+off."""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

KALLSYMS = Path("/proc/kallsyms")
_TEXT_NAME = re.compile(rb" [tTwW] (\S+)(?=[\t\n])")


# data symbols' type letters (per-CPU variables are listed as absolute, A, on x86-64)
DATA_KINDS = (b"d", b"D", b"b", b"B", b"r", b"R", b"A")


class Wildcard:
    """A shell wildcard: `*` any run of characters, `?` one character, every other
    character itself (no [classes]). The package's one wildcard matcher (kernel
    symbols, tracepoints, ELF symbols, IRQ line names).

    Why not a regex of `.*` (or fnmatch): a backtracking engine retries every
    split of the name among the stars, polynomial in the name with the number of
    stars as the power (`*?*?*?*?*?*?*?*?*?*?#` never ended on kallsyms). Here
    the stars cut the pattern into star-free pieces; the first must match at the
    start, the last at the end, and each one between at its leftmost place after
    the one before (the leftmost place leaves the most room for the rest, so it is
    never retried). Each piece is a quantifier-free regex (`?` is `.`) searched
    from where the one before ended, so each position of the name is tried at most
    once in all (`steps`, counted for tests, stays within len(name) + the number
    of stars), each try comparing at most len(piece) characters, in C."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        pieces = pattern.split("*")
        self._exact = len(pieces) == 1
        rx = [re.compile("".join("." if c == "?" else re.escape(c) for c in p), re.S)
              for p in pieces]
        self._head, self._tail, self._head_len = rx[0], rx[-1], len(pieces[0])
        self._mid = [r for r, p in zip(rx[1:-1], pieces[1:-1]) if p]   # ** is *
        self._tail_len = len(pieces[-1])
        self._min_len = len(pattern) - pattern.count("*")
        self.steps = 0

    def match(self, name: str) -> bool:
        if self._exact:
            return self._head.fullmatch(name) is not None
        end = len(name) - self._tail_len
        if len(name) < self._min_len or self._head.match(name) is None \
                or self._tail.fullmatch(name, end) is None:      # the ends first: cheap
            return False
        pos = self._head_len
        for piece in self._mid:
            found = piece.search(name, pos, end)
            self.steps += (found.start() if found else end) - pos + 1
            if found is None:
                return False
            pos = found.end()
        return pos <= end


def wildcard_match(name: str, pattern: str) -> bool:
    """`name` matches the shell wildcard `pattern` (see Wildcard)."""
    return Wildcard(pattern).match(name)


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    module: str | None     # None for vmlinux, else the module name without brackets
    kind: str              # kallsyms type letter


class Kallsyms:
    """Lazy view of /proc/kallsyms; name lookups scan the raw bytes (cheap, no full parse)."""

    def __init__(self, path: Path = KALLSYMS, text: bytes | None = None) -> None:
        self._path = path
        self._text = text
        self._sorted: tuple[list[int], list[Symbol]] | None = None
        self._names: list[str] | None = None

    @property
    def raw(self) -> bytes:
        if self._text is None:
            self._text = self._path.read_bytes()
        return self._text

    def find(self, name: str, module: str | None = None,
             kinds: tuple[bytes, ...] = (b"t", b"T", b"w", b"W")) -> list[Symbol]:
        """Symbols called `name` of the kallsyms type letters `kinds` (text by
        default), in `module` if given (None = anywhere)."""
        raw, out, key = self.raw, [], b" " + name.encode("utf-8", "surrogateescape")
        pos = raw.find(key)
        while pos >= 0:
            end = pos + len(key)
            if end < len(raw) and raw[end:end + 1] in (b"\n", b"\t") and pos >= 2:
                bol = raw.rfind(b"\n", 0, pos) + 1
                eol = raw.find(b"\n", end)
                parts = raw[bol:eol if eol >= 0 else len(raw)].split()
                if len(parts) >= 3 and parts[1] in kinds:
                    mod = parts[3].strip(b"[]").decode() if len(parts) > 3 else None
                    if module is None or mod == module:
                        out.append(Symbol(name, int(parts[0], 16), mod, parts[1].decode()))
            pos = raw.find(key, end)
        return out

    def lists_variables(self) -> bool:
        """False where kallsyms lists functions only (CONFIG_KALLSYMS_ALL off, e.g.
        Debian's arm64 kernels): judged by a variable every kernel has."""
        return bool(self.find("jiffies_64", kinds=DATA_KINDS))

    def exists(self, name: str, module: str | None = None) -> bool:
        return bool(self.find(name, module))

    def in_image(self, name: str) -> bool:
        """`name` is a text symbol of the kernel image itself (not of a module)."""
        return any(s.module is None for s in self.find(name))

    def first_existing(self, names: list[str]) -> str | None:
        return next((n for n in names if self.exists(n)), None)

    def match(self, pattern: str, limit: int = 0) -> list[str]:
        """Text symbol names matching a shell wildcard (* ?), sorted, unique."""
        w = Wildcard(pattern)
        names = sorted({n for n in self._text_names() if w.match(n)})
        return names[:limit] if limit else names

    def repeated(self, names: list[str]) -> dict[str, list[int]]:
        """The addresses of each of `names` that kallsyms lists more than once as
        text (static functions of one name in several files): a probe by name
        reaches one of them, a probe by address each."""
        counts: dict[str, int] = {}
        wanted = set(names)
        for n in self._text_names():
            if n in wanted:
                counts[n] = counts.get(n, 0) + 1
        return {n: sorted({s.addr for s in self.find(n)}) for n, c in counts.items() if c > 1}

    def _text_names(self) -> list[str]:
        # one linear pass over the raw text; the wildcard then runs per name
        if self._names is None:
            self._names = [m.group(1).decode("utf-8", "surrogateescape")
                           for m in _TEXT_NAME.finditer(self.raw)]
        return self._names

    def module_symbols(self, module: str) -> list[str]:
        """Text symbol names of a loaded module, sorted, unique."""
        name = re.escape(module.encode("utf-8", "surrogateescape"))
        rx = re.compile(rb" [tTwW] (\S+)\t\[" + name + rb"\]")
        return sorted({m.group(1).decode() for m in rx.finditer(self.raw)})

    def modules_of(self, name: str) -> set[str | None]:
        return {s.module for s in self.find(name)}

    def _table(self) -> tuple[list[int], list[Symbol]]:
        if self._sorted is None:
            syms = []
            for line in self.raw.splitlines():
                parts = line.split()
                if len(parts) < 3 or parts[1] not in b"tTwW" or len(parts[1]) != 1:
                    continue
                addr = int(parts[0], 16)
                if addr == 0:
                    continue
                mod = parts[3].strip(b"[]").decode() if len(parts) > 3 else None
                syms.append(Symbol(parts[2].decode(), addr, mod, parts[1].decode()))
            syms.sort(key=lambda s: s.addr)
            self._sorted = ([s.addr for s in syms], syms)
        return self._sorted

    def addresses_visible(self) -> bool:
        """kptr_restrict hides addresses (all zero) from readers without privilege."""
        return re.search(rb"^0*[1-9a-f][0-9a-f]* [tT] ", self.raw, re.M) is not None

    def resolve(self, addr: int) -> tuple[Symbol, int] | None:
        """The text symbol containing `addr` and the offset into it."""
        addrs, syms = self._table()
        i = bisect.bisect_right(addrs, addr) - 1
        if i < 0:
            return None
        return syms[i], addr - syms[i].addr

    def format(self, addr: int) -> str:
        """`func+0x1a`, `func+0x1a [module]`, or the raw hex address if unknown."""
        hit = self.resolve(addr)
        if hit is None:
            return f"0x{addr:x}"
        sym, off = hit
        mod = f" [{sym.module}]" if sym.module else ""
        return f"{sym.name}+0x{off:x}{mod}"

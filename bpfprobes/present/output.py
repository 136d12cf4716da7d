"""Event sinks: aligned columns (BCC's look), or JSON lines for log pipelines.

Both take the same calls — meta, event, lost, summary — so a tool never
branches on the output format.

Text is escaped here, where it is printed (safetext.for_terminal), never
earlier: events carry the exact text (JSON needs it, filters compare it). The
JSON sink writes ASCII only (ensure_ascii): valid JSON on any stream, safe on
a terminal, and a byte that was not UTF-8 travels as `\\udcNN` (exact bytes:
`.encode("utf-8", "surrogateescape")` after json.loads).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Callable, TextIO

from bpfprobes.base.safetext import for_terminal, write_line


@dataclass(frozen=True)
class Column:
    header: str
    width: int                         # negative: left-aligned; 0: last column, unpadded
    render: Callable[[dict], object]
    # True (the safe default): render gives text (a str), escaped for the
    # terminal as it is printed. False: a number (an int has no isprintable:
    # True would fail at the first event, loudly), or text that is ours or
    # already escaped (printed as it is).
    escape: bool = True


def _row_function(line: Callable[..., str], renders: list[Callable[[dict], object]],
                  escapes: list[bool]):
    """`e -> line(r0(e), r1(e), ...)` as one function, with no per-event list,
    loop or *args: the text hot path of an event storm. A text cell is
    `for_terminal(r(e))` with its fast path (one isprintable() pass) inlined,
    so that printable text costs no call. Built with eval (as namedtuple builds
    its methods) from our own names only, never from input."""
    names = [f"r{i}" for i in range(len(renders))]
    cells = [f"(s{i} if (s{i} := {n}(e)).isprintable() else esc(s{i}))" if escape else f"{n}(e)"
             for i, (n, escape) in enumerate(zip(names, escapes))]
    return eval(f"lambda e: line({', '.join(cells)})",  # noqa: S307
                {"line": line, "esc": for_terminal, **dict(zip(names, renders))})


class TextOutput:
    def __init__(self, tool: str, columns: list[Column], out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, header: bool = True) -> None:
        self.tool = tool
        self.columns = columns
        self.out = out
        self.err = err
        self._fmt = " ".join(self._cell(c.width) for c in columns)
        self._renders = [c.render for c in columns]
        self._row = _row_function((self._fmt + "\n").format, self._renders,
                                  [c.escape for c in columns])
        self._header = header

    @staticmethod
    def _cell(width: int) -> str:
        return "{}" if width == 0 else "{:<%d}" % -width if width < 0 else "{:>%d}" % width

    def meta(self, meta: dict) -> None:
        if self._header:
            self.out.write(self._fmt.format(*(c.header for c in self.columns)).rstrip() + "\n")

    def event(self, e: dict) -> None:
        try:
            self.out.write(self._row(e))
        except UnicodeEncodeError:          # a stream that cannot take a letter (ASCII locale)
            write_line(self.out, self._row(e).removesuffix("\n"))

    def lost(self, count: int, total: int) -> None:
        self.out.flush()
        self.err.write(f"{self.tool}: lost {count} events ({total} in all)\n")
        self.err.flush()

    def throttled(self, count: int, total: int) -> None:
        self.out.flush()
        self.err.write(f"{self.tool}: throttled {count} events over --rate-limit "
                       f"({total} in all)\n")
        self.err.flush()

    def summary(self, s: dict) -> None:
        self.out.flush()
        extra = for_terminal("".join(f", {k} {v}" for k, v in s.items()
                                     if k not in ("events", "lost", "reason", "elapsed")
                                     and not (k in SAID_WHEN_NONZERO and not v)))
        self.err.write(f"{self.tool}: {s['events']} events, {s['lost']} lost, "
                       f"{s['elapsed']:.1f} s, stopped by {s['reason']}{extra}\n")
        self.err.flush()

    def table(self, kind: str, rows: list[dict], text: str) -> None:
        """A table of figures (an interval's, the run's), as text: each line
        escaped (a table holds names from the traced system)."""
        self.out.flush()
        for line in text.split("\n"):
            write_line(self.out, for_terminal(line))
        self.out.flush()

    def flush(self) -> None:
        self.out.flush()


# summary figures the text line names only when they are not 0 (JSON always has them)
SAID_WHEN_NONZERO = frozenset({"recursion_misses"})


class JsonOutput:
    """One JSON object per line: meta first, then event/lost lines, summary last."""

    def __init__(self, tool: str, out: TextIO = sys.stdout) -> None:
        self.tool = tool
        self.out = out
        # ensure_ascii: ASCII out, whatever the text holds (controls, bidi
        # overrides, surrogate escapes of non-UTF-8 bytes): never an encoding
        # error, never a raw control on a terminal, and still exact
        self._dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode

    def _line(self, obj: dict) -> None:
        self.out.write(self._dumps(obj) + "\n")

    def meta(self, meta: dict) -> None:
        self._line({"type": "meta", "tool": self.tool, **meta})

    def event(self, e: dict) -> None:
        self._line({"type": "event", **e})

    def lost(self, count: int, total: int) -> None:
        self._line({"type": "lost", "count": count, "total": total})

    def throttled(self, count: int, total: int) -> None:
        self._line({"type": "throttled", "count": count, "total": total})

    def table(self, kind: str, rows: list[dict], text: str) -> None:
        """A table of figures as one line: {"type": kind, "rows": [...]}."""
        self._line({"type": kind, "rows": rows})

    def summary(self, s: dict) -> None:
        self._line({"type": "summary", **s})
        self.out.flush()

    def flush(self) -> None:
        self.out.flush()


class Quiet:
    """--quiet: a sink's meta, loss, tables and summary, but no event lines."""

    def __init__(self, sink: TextOutput | JsonOutput) -> None:
        self._sink = sink

    def event(self, e) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._sink, name)

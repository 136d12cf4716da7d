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

import io
import json
import os
import sys
from json import encoder as json_encoder
from dataclasses import dataclass
from typing import Callable, TextIO

from bpfprobes.base.safetext import for_terminal, write_line


def write_all(out: TextIO, text: str) -> None:
    """`text` written whole, to the stream's file descriptor in a loop of
    os.write after what the stream holds. A batch of event lines is hundreds of
    KB, and CPython 3.11's buffered writer drops the rest of such a write that
    a signal cuts short on a pipe (a SIGTERM mid-storm lost ~700 lines here,
    without an error): this loop resumes where write(2) stopped. A stream with
    no descriptor (a StringIO) is written as it is. UnicodeEncodeError: the
    stream cannot take a letter of `text`, nothing was written."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        out.write(text)
        return
    data = memoryview(text.encode(out.encoding or "utf-8", out.errors or "strict"))
    out.flush()
    while data:
        data = data[os.write(fd, data):]


@dataclass(frozen=True)
class Column:
    header: str
    width: int                         # negative: left-aligned; 0: last column, unpadded
    # a field's name (the cell is e[name], read inline: no call on the storm path),
    # or a function of the event
    render: str | Callable[[dict], object]
    # True (the safe default): the cell is text (a str), escaped for the
    # terminal as it is printed. False: a number (an int has no isprintable:
    # True would fail at the first event, loudly), or text that is ours or
    # already escaped (printed as it is).
    escape: bool = True


def _row_functions(line: Callable[[tuple], str], columns: list[Column]):
    """(`e -> line((cell0, cell1, ...))`, `events -> "".join of their lines`), each
    one function with no per-event list, loop or *args: the text hot path of an
    event storm. A field cell is `e[key]`; a text cell is `for_terminal(cell)`
    with its fast path (one isprintable() pass) inlined, so that printable text
    costs no call. Built with eval (as namedtuple builds its methods) from our
    own names only: keys and functions are bound values, never source text."""
    bound: dict[str, object] = {"line": line, "esc": for_terminal}
    cells = []
    for i, c in enumerate(columns):
        if isinstance(c.render, str):
            bound[f"k{i}"] = c.render
            value = f"e[k{i}]"
        else:
            bound[f"r{i}"] = c.render
            value = f"r{i}(e)"
        cells.append(f"(s{i} if (s{i} := {value}).isprintable() else esc(s{i}))"
                     if c.escape else value)
    row = f"line(({''.join(c + ', ' for c in cells)}))"
    return (eval(f"lambda e: {row}", bound),                         # noqa: S307
            eval(f"lambda es: ''.join([{row} for e in es])", bound))  # noqa: S307


class TextOutput:
    def __init__(self, tool: str, columns: list[Column], out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, header: bool = True) -> None:
        self.tool = tool
        self.columns = columns
        self.out = out
        self.err = err
        self._fmt = " ".join(self._cell(c.width) for c in columns)
        # the rows' own: % formatting of a tuple costs half of str.format's call
        line = " ".join(self._row_cell(c.width) for c in columns) + "\n"
        self._row, rows = _row_functions(line.__mod__, columns)
        # a batch in one string and one write, unless a subclass prints more per event
        self._rows = rows if type(self).event is TextOutput.event else None
        self._header = header

    @staticmethod
    def _cell(width: int) -> str:
        return "{}" if width == 0 else "{:<%d}" % -width if width < 0 else "{:>%d}" % width

    @staticmethod
    def _row_cell(width: int) -> str:
        return "%s" if width == 0 else "%-" + str(-width) + "s" if width < 0 else f"%{width}s"

    def meta(self, meta: dict) -> None:
        if self._header:
            self.out.write(self._fmt.format(*(c.header for c in self.columns)).rstrip() + "\n")

    def event(self, e: dict) -> None:
        try:
            self.out.write(self._row(e))
        except UnicodeEncodeError:          # a stream that cannot take a letter (ASCII locale)
            write_line(self.out, self._row(e).removesuffix("\n"))

    def events(self, es: list[dict]) -> None:
        """A batch of events (the storm path): as event() on each, in one write."""
        if self._rows is None:
            for e in es:
                self.event(e)
            return
        try:
            write_all(self.out, self._rows(es))
        except UnicodeEncodeError:
            for e in es:
                self.event(e)

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


class TextLines(TextOutput):
    """Columns' header, loss and summary as TextOutput's; the events come as their
    lines already, escaped (proberows: the probe tool's ftrace lines)."""

    def __init__(self, tool: str, header: str, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, show_header: bool = True) -> None:
        super().__init__(tool, [Column(header, 0, "line", escape=False)], out, err, show_header)

    def event(self, e: str) -> None:                 # type: ignore[override]
        write_line(self.out, e)

    def events(self, es: list[str]) -> None:         # type: ignore[override]
        try:
            write_all(self.out, "\n".join(es) + "\n")
        except UnicodeEncodeError:      # nothing was written: each line as the stream can
            for e in es:
                write_line(self.out, e)


def _json_dumps() -> Callable[[object], str]:
    """A compact JSON encoder, ASCII out: whatever the text holds (controls, bidi
    overrides, surrogate escapes of non-UTF-8 bytes) it is never an encoding
    error, never a raw control on a terminal, and still exact. json's C encoder
    is made once here (JSONEncoder.encode makes one per call, and a dict to
    check cycles: a third of an event's cost); events hold no cycles."""
    plain = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
    if json_encoder.c_make_encoder is None:         # an interpreter without _json
        return plain.encode
    make = json_encoder.c_make_encoder(None, plain.default, json_encoder.encode_basestring_ascii,
                                       None, ":", ",", False, False, True)
    return lambda obj: "".join(make(obj, 0))


dumps = _json_dumps()


# summary figures the text line names only when they are not 0 (JSON always has them)
SAID_WHEN_NONZERO = frozenset({"recursion_misses"})


class JsonOutput:
    """One JSON object per line: meta first, then event/lost lines, summary last."""

    def __init__(self, tool: str, out: TextIO = sys.stdout) -> None:
        self.tool = tool
        self.out = out
        self._dumps = dumps

    def _line(self, obj: dict) -> None:
        self.out.write(self._dumps(obj) + "\n")

    def meta(self, meta: dict) -> None:
        self._line({"type": "meta", "tool": self.tool, **meta})

    def event(self, e: dict) -> None:
        self._line({"type": "event", **e})

    def events(self, es: list[dict]) -> None:
        """A batch of event lines in one write; `"type"` put in front of each
        encoded event rather than copying its dict (where that is the same line:
        an event with keys, none of them "type"), as event() would otherwise."""
        if type(self).event is not JsonOutput.event:
            for e in es:
                self.event(e)
            return
        dumps = self._dumps
        write_all(self.out, "".join(['{"type":"event",' + dumps(e)[1:] + "\n"
                                     if e and "type" not in e else
                                     dumps({"type": "event", **e}) + "\n" for e in es]))

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


class EncodedJson(JsonOutput):
    """JSON lines whose events come encoded, "type" first (proberows: a storm's
    lines are built from a template per probe, not from a dict each)."""

    def event(self, e: str) -> None:                 # type: ignore[override]
        self.out.write(e + "\n")

    def events(self, es: list[str]) -> None:         # type: ignore[override]
        write_all(self.out, "\n".join(es) + "\n")


class Quiet:
    """--quiet: a sink's meta, loss, tables and summary, but no event lines."""

    def __init__(self, sink: TextOutput | JsonOutput) -> None:
        self._sink = sink

    def event(self, e) -> None:
        pass

    def events(self, es) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self._sink, name)

"""trace_pipe lines of our dynamic events -> the probe tool's event fields.

A line, with the record-tgid option our instance sets:

    COMM-TID (TGID) [CPU] FLAGS TIMESTAMP: EVENT: (WHERE) NAME=VALUE ...

COMM may hold spaces and dashes (the TID follows the last dash before the
TGID column); FLAGS are ftrace's latency columns. `-s` stacks are records of
their own: a `<stack trace>` line and ` => FRAME` lines. Lines come here as
exact text (safetext.decode_exact).

The kernel escapes nothing: comm and string values are printed raw. The traced
program controls both, so a text line is not trusted as it looks:

- a `"` or ` NAME=` inside a string value could shift the fields: a line is
  read only when it splits into the declared NAME=VALUE fields, in order, in
  exactly one way (numbers in their strict printed form, strings quoted);
- a newline inside a comm or a string value ends the line there, and what
  follows could be made to look like whole events. Reader therefore checks a
  whole read() of trace_pipe at once (the kernel fills one with whole records):
  the lines that look like record heads must be as many as the records the
  read consumed (the caller counts them from per_cpu/*/stats), and every line
  must be a record line in its place. If not, the read is *tainted*: every
  event in it is handed on with `ambiguous` set (shown flagged, never as a
  normal event), the lines that cannot be an event's own head (an unterminated
  string's continuation, a stray line) are swallowed into the event before them.

TID, TGID, CPU and the timestamp are the kernel's, after the comm: the head is
anchored at the last `-TID (TGID) [CPU]` of the line, and a comm (15 bytes)
cannot hold a whole head, so in a clean read they are not the program's to
choose. They are not re-checked against /proc (which would race PID reuse and
miss exited tasks); /proc is read only where ftrace did not know the task
(`<...>`, `(-------)`). A whole read stays the unit of trust: one forged line
flags every event of that read (at most a page of text), never fewer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

_CONTEXT = (r"^\s*(?P<comm>.*)-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+|-+)\)\s+\[(?P<cpu>\d+)\]\s+"
            r"(?P<flags>\S{4,5})\s+(?P<ts>\d+\.\d+):\s+")
# ASCII: the kernel prints ASCII digits; \d would take any script's (and int() read them)
_HEAD = re.compile(_CONTEXT + r"(?P<event>[^\s:]+):\s?(?P<rest>.*)$", re.ASCII)
_STACK_HEAD = re.compile(_CONTEXT + r"<(?:user )?stack trace>$", re.ASCII)
_LOST = re.compile(r"^CPU:\d+ \[LOST \d+ EVENTS\]$", re.ASCII)
FRAME = " => "
FAULT = "(fault)"
STRING_KINDS = ("string", "ustring")
# a number as the kernel prints it, nothing more (a value that would also be
# read otherwise is what makes a line ambiguous)
_NUMBER = {"u": re.compile(r"[0-9]+"), "s": re.compile(r"-?[0-9]+"),
           "x": re.compile(r"0x[0-9a-fA-F]+"),
           "symbol": re.compile(r"[^\s\"]+"), None: re.compile(r"[^ \n]*")}
MAX_WAYS = 2            # splits counted up to this: one is exact, more is ambiguous

Fields = Sequence[tuple[str, str | None]]      # (name, kind); kind None: not known


@dataclass
class Line:
    event: str
    comm: str
    tid: int
    pid: int | None
    cpu: int
    flags: str
    ts_ns: int
    where: str | None
    values: dict[str, str | None]       # as printed, strings unquoted; None: not splittable
    stack: list[str] = field(default_factory=list)
    # the line as read, exact (bytes not UTF-8 as surrogate escapes); the text
    # output prints it through safetext.for_terminal: ftrace writes comm and
    # string values raw, control bytes included. Swallowed lines are joined with "\n".
    raw: str = ""
    # not reported as a normal event: its fields do not split in exactly one
    # way, or the read it came in holds a line no record could have printed
    ambiguous: bool = False
    ways: int = 1                       # 0: not (yet) splittable, 1: exact, 2: more than one
    lead: str = ""                      # stray lines read before it (a comm's first part?)
    text: str = field(default="", repr=False)   # the NAME=VALUE text, swallowed lines too


def _fields(names: Iterable) -> list[tuple[str, str | None]]:
    """Names as (name, kind); a bare name's kind is not known."""
    return [(n, None) if isinstance(n, str) else (n[0], n[1]) for n in names]


def _where(rest: str) -> tuple[str | None, str]:
    """'(sym+0x0/0x10) a=1' -> ('sym+0x0/0x10', 'a=1'); parentheses may nest in
    a return probe's '(caller <- func)'."""
    if not rest.startswith("("):
        return None, rest
    depth = 0
    for i, c in enumerate(rest):
        depth += c == "("
        depth -= c == ")"
        if depth == 0:
            return rest[1:i], rest[i + 1:].lstrip(" ")
    return None, rest


def _value_ends(text: str, pos: int, kind: str | None) -> list[int]:
    """Where a value of this kind starting at pos could end."""
    ends = [pos + len(FAULT)] if text.startswith(FAULT, pos) else []
    if kind in STRING_KINDS or kind is None:
        if text.startswith('"', pos):
            i = text.find('"', pos + 1)
            while i >= 0:
                ends.append(i + 1)
                i = text.find('"', i + 1)
    if kind not in STRING_KINDS:
        m = _NUMBER.get(kind, _NUMBER[None]).match(text, pos)
        if m is not None:
            ends.append(m.end())
    return ends


def splits(text: str, names: Iterable) -> tuple[int, dict[str, str] | None]:
    """How many ways (counted up to MAX_WAYS) `text` reads as the fields
    ` NAME=VALUE` in order, and the values when there is exactly one."""
    fields = _fields(names)
    memo: dict[tuple[int, int], list] = {}

    def ways(i: int, pos: int) -> list:       # [count, ends of the first way]
        if (i, pos) in memo:
            return memo[(i, pos)]
        if i == len(fields):
            got = [1, []] if pos == len(text) else [0, None]
        else:
            name, kind = fields[i]
            key = f"{name}=" if i == 0 else f" {name}="
            got = [0, None]
            if text.startswith(key, pos):
                begin = pos + len(key)
                for end in _value_ends(text, begin, kind):
                    n, rest = ways(i + 1, end)
                    if n and got[0] == 0:
                        got[1] = [(begin, end)] + rest
                    got[0] = min(MAX_WAYS, got[0] + n)
                    if got[0] >= MAX_WAYS:
                        break
        memo[(i, pos)] = got
        return got

    count, spans = ways(0, 0)
    if count != 1:
        return count, None
    out = {}
    for (name, _), (begin, end) in zip(fields, spans):
        value = text[begin:end]
        out[name] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    return 1, out


def split_values(text: str, names: Iterable) -> dict[str, str | None]:
    """'a=1 s="x y" b=2' with names [a, s, b] -> {'a': '1', 's': 'x y', 'b': '2'};
    every value None unless the text splits in exactly one way."""
    n, values = splits(text, names)
    return values if values is not None else {name: None for name, _ in _fields(names)}


def _settle(ln: Line, names: Iterable) -> None:
    """(Re)split a Line's argument text, possibly grown by swallowed lines."""
    ln.ways, values = splits(ln.text, names)
    ln.values = values if values is not None else {name: None for name, _ in _fields(names)}
    ln.ambiguous = ln.ambiguous or ln.ways != 1


def parse(line: str, names_of: dict[str, Iterable]) -> Line | str | None:
    """A Line for an event of ours (flagged ambiguous unless its fields split in
    exactly one way), the frame text for a stack line, else None."""
    if line.startswith(FRAME):
        return line[len(FRAME):].strip()
    m = _HEAD.match(line)
    if m is None or m.group("event") not in names_of:   # another event, "<stack trace>"
        return None
    tgid = m.group("tgid")
    secs, _, frac = m.group("ts").partition(".")
    where, args = _where(m.group("rest"))
    ln = Line(m.group("event"), m.group("comm").strip(), int(m.group("tid")),
              int(tgid) if tgid.isdigit() else None, int(m.group("cpu")), m.group("flags"),
              int(secs) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]), where, {}, raw=line,
              text=args)
    _settle(ln, names_of[ln.event])
    return ln


def is_record_head(line: str) -> bool:
    """Does the line look like the first line of a record (an event or a stack)?"""
    return _HEAD.match(line) is not None or _STACK_HEAD.match(line) is not None


class Reader:
    """Lines of whole trace_pipe reads -> Lines, checked per read (see the module
    docstring). An event is held until its stack lines can no longer follow:
    `take()` hands on what is complete, `flush()` everything."""

    def __init__(self, names_of: dict[str, Iterable]) -> None:
        self.names_of = names_of
        self.pending: Line | None = None    # the last event, its stack may still come
        self.in_stack = False               # the line before was a stack head or frame
        self.done: list[Line] = []

    def feed(self, lines: list[str], records: int | None) -> None:
        """One read's lines (split at "\\n", the read ending with one); `records`:
        how many records the read consumed (None: not known, not checked)."""
        heads, tainted, batch, lead = 0, False, [], []
        carried = self.pending          # from the read before: its stack may be in this one
        self.in_stack = False           # a read starts with a record's head
        for line in lines:
            head = is_record_head(line)
            heads += head
            open_ = self.pending is not None and self.pending.ways == 0 \
                and self.pending is not carried
            got = None if open_ else parse(line, self.names_of)
            if isinstance(got, Line):
                self._hand_on()
                self.pending, self.in_stack = got, False
                got.lead, lead = "\n".join(lead), []
                batch.append(got)
            elif _STACK_HEAD.match(line) and not open_:
                self.in_stack = self.pending is not None
                tainted |= not self.in_stack
            elif isinstance(got, str) and self.in_stack:
                self.pending.stack.append(got)
            elif _LOST.match(line) and not open_:
                pass
            elif self.pending is not None and self.pending is not carried:
                # an unterminated string's continuation, or a stray line: part of
                # the event before, never an event of its own
                self.pending.raw += "\n" + line
                self.pending.text += "\n" + line
                self.in_stack = False
                _settle(self.pending, self.names_of[self.pending.event])
                tainted = True
            else:
                lead.append(line)       # before any event of this read: a comm's first part?
                tainted = True
        tainted |= records is not None and heads != records
        tainted |= any(ln.ways != 1 for ln in batch)
        for ln in batch:
            ln.ambiguous = ln.ambiguous or tainted

    def _hand_on(self) -> None:
        if self.pending is not None:
            self.done.append(self.pending)
        self.pending, self.in_stack = None, False

    def take(self) -> list[Line]:
        """The events whose stacks are complete."""
        out, self.done = self.done, []
        return out

    def flush(self) -> list[Line]:
        """Everything, the last event too (no more stack lines can follow)."""
        self._hand_on()
        return self.take()


def typed(value: str | None, kind: str):
    """A printed value as the BPF backend gives it: int for u/s/x, str otherwise;
    None for a fault or a value that does not read as its kind (never raises:
    the text is the traced program's)."""
    if value is None or value == FAULT:
        return None
    if kind in ("u", "s", "x"):
        m = _NUMBER[kind].fullmatch(value)
        return None if m is None else int(value, 16 if kind == "x" else 10)
    if kind == "symbol":
        return value.split("/", 1)[0]              # sym+0x10/0x40 -> sym+0x10
    return value

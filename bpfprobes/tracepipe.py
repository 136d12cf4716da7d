"""trace_pipe lines of our dynamic events -> the probe tool's event fields.

A line, with the record-tgid option our instance sets:

    COMM-TID (TGID) [CPU] FLAGS TIMESTAMP: EVENT: (WHERE) NAME=VALUE ...

COMM may hold spaces and dashes (the TID follows the last dash before the
TGID column); FLAGS are ftrace's latency columns; a string VALUE is printed in
quotes with nothing escaped, so the values are split at the names the spec
declared, in order, not at spaces. `-s` stacks follow as a `<stack trace>`
line and ` => FRAME` lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEAD = re.compile(r"^\s*(?P<comm>.*)-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+|-+)\)\s+\[(?P<cpu>\d+)\]\s+"
                   r"(?P<flags>\S{4,5})\s+(?P<ts>\d+\.\d+):\s+(?P<event>[^\s:]+):\s?(?P<rest>.*)$")


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
    values: dict[str, str]              # as printed, strings unquoted
    stack: list[str] = field(default_factory=list)
    raw: str = ""                       # the line itself (the text output prints it)


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
            return rest[1:i], rest[i + 1:].lstrip()
    return None, rest


def split_values(text: str, names: list[str]) -> dict[str, str]:
    """'a=1 s="x y" b=2' with names [a, s, b] -> {'a': '1', 's': 'x y', 'b': '2'}."""
    out, pos = {}, 0
    for i, name in enumerate(names):
        key = f"{name}="
        start = text.find(key, pos) if i == 0 else pos
        if start < 0 or not text.startswith(key, start):
            break
        begin = start + len(key)
        if i + 1 < len(names):
            nxt = f" {names[i + 1]}="
            # a quoted string ends at the last quote before the next name that still
            # leaves the name after that one to come (nothing inside is escaped)
            limit = text.find(f" {names[i + 2]}=", begin) if i + 2 < len(names) else -1
            limit = len(text) if limit < 0 else limit
            quoted = text.rfind(f'"{nxt}', begin + 1, limit + len(nxt) + 1) \
                if text.startswith('"', begin) else -1
            end = quoted + 1 if quoted >= 0 else text.find(nxt, begin)
            end = len(text) if end < 0 else end
        else:
            end = len(text)
        value = text[begin:end]
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[name] = value
        pos = end + 1
    return out


def parse(line: str, names_of: dict[str, list[str]]) -> Line | str | None:
    """A Line for an event of ours, the frame text for a stack line, else None."""
    if line.startswith(" => "):
        return line[4:].strip()
    m = _HEAD.match(line)
    if m is None:
        return None
    event, rest = m.group("event"), m.group("rest")
    if event not in names_of:           # another event, or the "<stack trace>" line
        return None
    where, args = _where(rest)
    tgid = m.group("tgid")
    secs, _, frac = m.group("ts").partition(".")
    return Line(event, m.group("comm").strip(), int(m.group("tid")),
                int(tgid) if tgid.isdigit() else None, int(m.group("cpu")), m.group("flags"),
                int(secs) * 1_000_000_000 + int(frac.ljust(9, "0")[:9]), where,
                split_values(args, names_of[event]), raw=line)


def typed(value: str, kind: str):
    """A printed value as the BPF backend gives it: int for u/s/x, str otherwise."""
    if value == "(fault)":
        return None
    if kind in ("u", "s"):
        return int(value)
    if kind == "x":
        return int(value, 16)
    if kind == "symbol":
        return value.split("/", 1)[0]              # sym+0x10/0x40 -> sym+0x10
    return value

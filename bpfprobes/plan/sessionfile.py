"""A serve session file (TOML, read with the standard library's tomllib) -> parts.

    listen = "127.0.0.1:9435"
    [[count]]      name, targets, by (target comm pid), max_series, rate_limit
    [[probe]]      name, specs, by (probe comm pid errno ARG), filter, latency, ...
    [[opensnoop]]  name, by (syscall comm pid errno), filter, max_series, rate_limit

Everything is checked here, before anything touches the kernel: an unknown
key, a wrong type, a bad name or label, a duplicate name is one line naming
the file, the line and the key (UsageError). Specs, targets and filters are
checked by their own parsers when the part is planned.
"""
from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass

from bpfprobes.base.errors import UsageError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.plan import metricplan
from bpfprobes.plan.runconfig import RateLimit

DEFAULT_LISTEN = ("127.0.0.1", 9435)
MAX_FILE = 1 << 20                  # a session file is a page of text, not a megabyte
NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")     # part of a metric name: nothing else
# the families each kind of part adds (after bpfprobes_), and the exporter's own
FAMILIES = {"count": ("{}",), "probe": ("{}_events", "{}_latency_seconds"),
            "opensnoop": ("{}_opens",)}
HEALTH = ("part_up", "lost_events", "throttled_events", "series_dropped")
# label names an argument may not take: Prometheus's own (__*, le, quantile, and the
# target's instance and job) and the ones the exporter sets itself
RESERVED_LABELS = ("le", "quantile", "instance", "job", "other", "part", "probe", "target",
                   "syscall", "comm", "pid", "errno")

# kind -> (key -> (type, required)); by's fixed choices per kind (probe also: its args)
KEYS = {
    "count": {"name": (str, True), "targets": (list, True), "by": (list, False),
              "max_series": (int, False), "rate_limit": ((int, str), False)},
    "probe": {"name": (str, True), "specs": (list, True), "by": (list, False),
              "filter": (str, False), "latency": (bool, False), "max_series": (int, False),
              "rate_limit": ((int, str), False)},
    "opensnoop": {"name": (str, False), "by": (list, False), "filter": (str, False),
                  "max_series": (int, False), "rate_limit": ((int, str), False)},
}
BY = {"count": ("target", "comm", "pid"), "probe": ("probe", "comm", "pid", "errno"),
      "opensnoop": ("syscall", "comm", "pid", "errno")}
DEFAULT_BY = {"count": ("target",), "probe": (), "opensnoop": ("comm", "errno")}


@dataclass(frozen=True)
class Part:
    kind: str                               # count | probe | opensnoop
    name: str
    line: int                               # of its [[kind]] header
    targets: tuple[str, ...] = ()           # count
    specs: tuple[str, ...] = ()             # probe
    by: tuple[str, ...] = ()
    filter: str | None = None
    latency: bool = False
    max_series: int = metricplan.DEFAULT_MAX_SERIES
    rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class Session:
    path: str
    listen: tuple[str, int]
    parts: tuple[Part, ...]


class _Lines:
    """Line numbers of a file's table headers and keys (tomllib keeps none)."""

    def __init__(self, text: str) -> None:
        self.headers: dict[str, list[int]] = {}
        self.tables: dict[str, int] = {}                    # [name]: a table, not an array
        self.keys: list[tuple[int, str, int, str]] = []     # (line, kind, index, key)
        kind, index = "", -1
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            m = re.match(r"\[\[\s*([A-Za-z0-9_-]+)\s*\]\]", line)
            if m:
                kind = m.group(1)
                self.headers.setdefault(kind, []).append(n)
                index = len(self.headers[kind]) - 1
                continue
            m = re.match(r"\[\s*([A-Za-z0-9_-]+)\s*\]", line)
            if m:
                kind, index = m.group(1), -1
                self.tables.setdefault(kind, n)
                continue
            m = re.match(r"([A-Za-z0-9_-]+)\s*=", line)
            if m:
                self.keys.append((n, kind, index, m.group(1)))

    def header(self, kind: str, index: int) -> int:
        found = self.headers.get(kind, [])
        return found[index] if index < len(found) else 0

    def key(self, kind: str, index: int, key: str) -> int:
        return next((n for n, k, i, name in self.keys if (k, i, name) == (kind, index, key)),
                    self.header(kind, index))


def _error(path: str, line: int, what: str, hint: str = "") -> UsageError:
    where = f"{path}:{line}" if line else path
    return UsageError(f"{for_terminal(where)}: {what}", hint)


def _part(path: str, lines: _Lines, kind: str, index: int, table: object) -> Part:
    header = lines.header(kind, index)
    if not isinstance(table, dict):
        raise _error(path, header, f"{kind} is a table of parts: [[{kind}]]")
    keys = KEYS[kind]
    for key, value in table.items():
        where = lines.key(kind, index, key)
        if key not in keys:
            raise _error(path, where, f"[[{kind}]]: unknown key {for_terminal(key)!r}",
                         "keys: " + ", ".join(keys))
        want = keys[key][0]
        # bool is an int in Python: `max_series = true` is no number
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise _error(path, where, f"[[{kind}]] {key}: expected {names}, "
                         f"not {for_terminal(repr(value))[:60]}")
        if want is list and not all(isinstance(v, str) for v in value):
            raise _error(path, where, f"[[{kind}]] {key}: expected a list of strings")
    for key, (_, required) in keys.items():
        if required and key not in table:
            raise _error(path, header, f"[[{kind}]]: {key} is required")
    name = table.get("name", kind)
    if not NAME.fullmatch(name):
        raise _error(path, lines.key(kind, index, "name"),
                     f"[[{kind}]] name {for_terminal(repr(name))}: a metric name's part is "
                     "lowercase letters, digits and _ (not a digit first, at most 64)")
    by = tuple(table.get("by", DEFAULT_BY[kind]))
    for label in by:
        if label not in BY[kind] and (kind != "probe" or not NAME.fullmatch(label)
                                      or label.startswith("__") or label in RESERVED_LABELS):
            raise _error(path, lines.key(kind, index, "by"),
                         f"[[{kind}]] by: {for_terminal(repr(label))} is no label here",
                         "labels: " + ", ".join(BY[kind]) +
                         (", or a captured argument's name (not __*, le, quantile, instance, "
                          "job, other, part, target, syscall)" if kind == "probe" else ""))
    if len(set(by)) != len(by):
        raise _error(path, lines.key(kind, index, "by"), f"[[{kind}]] by names a label twice")
    for key in ("targets", "specs"):
        if key in table and not table[key]:
            raise _error(path, lines.key(kind, index, key), f"[[{kind}]] {key} is empty")
    max_series = table.get("max_series", metricplan.DEFAULT_MAX_SERIES)
    if not 1 <= max_series <= metricplan.MAX_SERIES_LIMIT:
        raise _error(path, lines.key(kind, index, "max_series"),
                     f"[[{kind}]] max_series: 1 to {metricplan.MAX_SERIES_LIMIT}, not {max_series}")
    try:
        rate = RateLimit.parse(str(table["rate_limit"])) if "rate_limit" in table else None
    except ValueError as e:
        raise _error(path, lines.key(kind, index, "rate_limit"),
                     f"[[{kind}]] rate_limit: {for_terminal(str(e))}") from None
    return Part(kind, name, header, tuple(table.get("targets", ())), tuple(table.get("specs", ())),
                by, table.get("filter"), bool(table.get("latency", False)), max_series, rate)


def _unique_families(path: str, parts: list[Part]) -> None:
    """Two parts must not make one metric (count `x_events` and probe `x` would both
    be bpfprobes_x_events), nor one of the exporter's own: a scrape would fail whole."""
    owner: dict[str, str] = {h: "the exporter's own" for h in HEALTH}
    for p in parts:
        for pattern in FAMILIES[p.kind]:
            family = pattern.format(p.name)
            if family in owner:
                raise _error(path, p.line, f"[[{p.kind}]] {p.name} would make the metric "
                             f"bpfprobes_{family}, which is {owner[family]}",
                             "rename one of them")
            owner[family] = f"part {p.name}'s"


def listen_address(text: str) -> tuple[str, int]:
    """ADDR:PORT: 127.0.0.1:9435, [::1]:9435, or :9435 (every address). ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"an address is ADDR:PORT, not {for_terminal(repr(text))}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def parse(text: str, path: str) -> Session:
    """A session from the file's text (UsageError: file:line: what)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _error(path, 0, f"not TOML: {e}") from None
    except RecursionError:          # tomllib recurses per nested [ or {: a hostile file
        raise _error(path, 0, "not TOML we read: nested too deeply") from None
    lines = _Lines(text)
    parts: list[Part] = []
    for key, value in doc.items():
        if key == "listen":
            continue
        if key not in KEYS:
            raise _error(path, next((n for n, k, _, name in lines.keys if not k and name == key),
                                    lines.header(key, 0)),
                         f"unknown key {for_terminal(repr(key))}",
                         "keys: listen, [[count]], [[probe]], [[opensnoop]]")
        if not isinstance(value, list):
            raise _error(path, lines.tables.get(key, 0), f"{key} is a table of parts: [[{key}]]")
        parts += [_part(path, lines, key, i, table) for i, table in enumerate(value)]
    parts.sort(key=lambda p: p.line)            # the file's order, whatever the kinds
    seen: dict[str, Part] = {}
    for p in parts:
        if p.name in seen:
            raise _error(path, p.line, f"two parts are named {p.name!r} (the other at line "
                         f"{seen[p.name].line})", "names make the metrics' names: one each")
        seen[p.name] = p
    _unique_families(path, parts)
    if not parts:
        raise _error(path, 0, "no parts", "add a [[count]], [[probe]] or [[opensnoop]] table")
    listen = doc.get("listen", None)
    try:
        address = listen_address(listen) if isinstance(listen, str) else DEFAULT_LISTEN
    except ValueError as e:
        raise _error(path, next((n for n, k, _, name in lines.keys if not k and name == "listen"),
                                0), f"listen: {e}") from None
    if listen is not None and not isinstance(listen, str):
        raise _error(path, 0, "listen: expected a string \"ADDR:PORT\"")
    return Session(path, address, tuple(parts))


def load(path: str) -> Session:
    """Read and parse the file (UsageError: it cannot be read, or what is wrong)."""
    try:
        # not blocking on a FIFO put where the file was (a reload must not hang), and a
        # regular file only
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot read {for_terminal(path)}: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{for_terminal(path)} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(MAX_FILE + 1)
        except OSError as e:
            raise UsageError(f"cannot read {for_terminal(path)}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE:
        raise _error(path, 0, f"larger than {MAX_FILE} bytes: no session file is")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(path, 0, f"not UTF-8 (byte {e.start})") from None
    return parse(text, path)

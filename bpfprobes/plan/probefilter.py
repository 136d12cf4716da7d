"""--filter EXPR: a predicate on captured fields, ftrace's filter syntax.

    EXPR := EXPR || EXPR | EXPR && EXPR | !EXPR | (EXPR) | NAME OP VALUE
    OP   := == != < <= > >= & ~ !~        (~ is a glob match on strings)
    VALUE:= 42 | -1 | 0x1f | ENOENT | -ENOENT | "text" | 'text'

NAME is a captured argument, or one of pid, tid, comm, cpu, latency_ns.
Numbers are decimal or 0x hex and fit in 64 bits (-2^63 .. 2^64-1); a leading
zero (`012`, octal to C and to ftrace) is refused rather than guessed. The
text must be UTF-8, strings hold no NUL, and nesting is at most MAX_DEPTH.
The kernel evaluates what it can (numbers, string equality, a glob that is a
prefix followed by one `*`); `split` gives the kernel an expression that
accepts a superset of the events, and says whether userspace must check the
rest (then `evaluate` runs on each decoded event). No C here: codegen
translates the kernel part.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Union

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import errnos

MAX_KERNEL_LITERAL = 64       # longer string compares go to userspace (keeps the program small)
MAX_DEPTH = 32                # ( and ! nested: far beyond any real filter, far below Python's stack
MAX_TESTS = 128               # comparisons in one filter (each is a branch in the BPF program)
INT_MIN, INT_MAX = -2**63, 2**64 - 1     # what a value of some s64/u64 type can be compared with
BUILTINS = {"pid": "int", "tid": "int", "cpu": "int", "comm": "str", "latency_ns": "int"}
OPS = ("==", "!=", "<=", ">=", "<", ">", "&", "!~", "~")
STRING_OPS = ("==", "!=", "~", "!~")


@dataclass(frozen=True)
class Cmp:
    name: str
    op: str
    value: Union[int, str]


@dataclass(frozen=True)
class Not:
    inner: "Expr"


@dataclass(frozen=True)
class And:
    items: tuple["Expr", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Expr", ...]


Expr = Union[Cmp, Not, And, Or]

_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
                         |(?P<op>&&|\|\||==|!=|<=|>=|!~|[<>&~!()])
                         |(?P<word>-?[A-Za-z0-9_.]+))""", re.X)


def _shown(text: str, limit: int = 40) -> str:
    """User text quoted for a one-line message: escaped by repr, and short."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise UsageError(f"cannot parse filter at {_shown(text[pos:].strip(), 20)}",
                             "e.g. --filter 'ret < 0' or --filter 'file ~ \"/etc/*\"'")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# Numbers: decimal or 0x hex, parsed by int() only once their length is known to
# fit 64 bits (int() of 5,000 digits raises; of millions, takes seconds).
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX = re.compile(r"0[xX]0*([0-9a-fA-F]+)")
_LEADING_ZERO = re.compile(r"0[0-9]+")
_MAX_DIGITS = {10: 20, 16: 16}


def _number(body: str, text: str) -> int | None:
    """The value of a number literal; None when `body` is no number (an errno name)."""
    if body[:1] not in tuple("0123456789"):
        return None
    hexm = _HEX.fullmatch(body)
    digits, base = (hexm.group(1), 16) if hexm else (body, 10)
    if hexm is None and _LEADING_ZERO.fullmatch(body):    # C and ftrace read 012 as octal
        hint = "write it without the leading 0 for decimal, or in hex (0x...)"
        if len(body) <= 21:
            octal = "" if set(body) & set("89") else f", or {int(body, 8):#x} for octal {body}"
            hint = f"write {body.lstrip('0') or 0} for decimal{octal}"
        raise UsageError(f"ambiguous number {_shown(text)} in filter: a leading 0 is octal "
                         "to C and to ftrace", hint)
    if hexm is None and not _DECIMAL.fullmatch(body):
        raise UsageError(f"bad number {_shown(text)} in filter", "numbers are decimal or 0x hex")
    if len(digits) > _MAX_DIGITS[base]:
        raise UsageError(f"filter value {_shown(text)} does not fit in 64 bits",
                         f"numbers go from {INT_MIN} to {INT_MAX:#x}")
    return int(digits, base)


def _literal(kind: str, text: str) -> int | str:
    if kind == "str":
        value = re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.S)
        if "\0" in value:
            raise UsageError("a filter string cannot hold a NUL byte",
                             "strings end at the first NUL in the kernel")
        return value
    neg = text.startswith("-")
    body = text[1:] if neg else text
    value = _number(body, text)
    if value is None:
        value = errnos.code(body)
    if value is None:
        raise UsageError(f"bad filter value {_shown(text)}",
                         "a number, an errno name (-ENOENT) or a quoted string")
    value = -value if neg else value
    if not INT_MIN <= value <= INT_MAX:
        raise UsageError(f"filter value {_shown(text)} does not fit in 64 bits",
                         f"numbers go from {INT_MIN} to {INT_MAX:#x}")
    return value


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.text = text
        self.depth = 0           # ( and ! open around the current token
        self.tests = 0

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise UsageError(f"filter nests ( or ! more than {MAX_DEPTH} deep",
                             "write it flatter: a && b && c needs no parentheses")

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise UsageError(f"filter {self.text!r} ends too early", "e.g. 'ret < 0'")
        self.i += 1
        return self.toks[self.i - 1]

    def expr(self) -> Expr:
        items = [self.conj()]
        while self.peek() == "||":
            self.take()
            items.append(self.conj())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conj(self) -> Expr:
        items = [self.unary()]
        while self.peek() == "&&":
            self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Expr:
        if self.peek() == "!":
            self.take()
            self.nest()
            e: Expr = Not(self.unary())
            self.depth -= 1
            return e
        if self.peek() == "(":
            self.take()
            self.nest()
            e = self.expr()
            if self.take()[1] != ")":
                raise UsageError(f"missing ')' in filter {_shown(self.text)}")
            self.depth -= 1
            return e
        kind, name = self.take()
        if kind != "word" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"expected a field name in filter, got {_shown(name)}",
                             "NAME OP VALUE, e.g. 'ret < 0'")
        _, op = self.take()
        if op not in OPS:
            raise UsageError(f"unknown operator {_shown(op)} in filter", "one of " + " ".join(OPS))
        kind, text = self.take()
        if kind not in ("word", "str"):
            raise UsageError(f"expected a value after {name} {op}, got {_shown(text)}")
        self.tests += 1
        if self.tests > MAX_TESTS:
            raise UsageError(f"filter has more than {MAX_TESTS} comparisons",
                             "split the work over several runs, or filter the output")
        return Cmp(name, op, _literal(kind, text))


def parse(text: str) -> Expr:
    """Parse (syntax only); `bind` checks names and types against a probe."""
    if not isinstance(text, str):
        raise UsageError(f"a filter is text, not {type(text).__name__}", "e.g. 'ret < 0'")
    try:
        text.encode("utf-8")          # argv that was not UTF-8 arrives surrogate-escaped
    except UnicodeEncodeError:
        raise UsageError("the filter is not valid UTF-8 text",
                         "write it in UTF-8 (strings in a filter compare as UTF-8 bytes)") from None
    p = _Parser(text)
    if not p.toks:
        raise UsageError("empty filter", "e.g. --filter 'ret < 0'")
    e = p.expr()
    if p.peek() is not None:
        raise UsageError(f"unexpected {_shown(p.peek() or '')} in filter {_shown(text)}",
                         "join tests with && or ||")
    return e


def names(e: Expr) -> set[str]:
    if isinstance(e, Cmp):
        return {e.name}
    if isinstance(e, Not):
        return names(e.inner)
    return set().union(*(names(i) for i in e.items))


def _cmps(e: Expr):
    if isinstance(e, Cmp):
        yield e
    elif isinstance(e, Not):
        yield from _cmps(e.inner)
    else:
        for i in e.items:
            yield from _cmps(i)


@dataclass(frozen=True)
class FieldInfo:
    kind: str            # 'int' | 'str'
    capacity: int = 0    # string slot size (the kernel compares inside it)


def check(e: Expr, fields: Mapping[str, FieldInfo]) -> None:
    """Refuse comparisons that mix strings and numbers."""
    for c in _cmps(e):
        f = fields[c.name]
        if f.kind == "str":
            if not isinstance(c.value, str):
                raise UsageError(f"{c.name} is a string: compare it with a quoted value",
                                 f'e.g. {c.name} == "text" or {c.name} ~ "prefix*"')
            if c.op not in STRING_OPS:
                raise UsageError(f"{c.name} is a string: {c.op} does not apply",
                                 "strings take == != ~ !~")
        else:
            if isinstance(c.value, str):
                raise UsageError(f"{c.name} is a number, not a string ({c.value!r})",
                                 "drop the quotes, or capture it with :string")
            if c.op in ("~", "!~"):
                raise UsageError(f"{c.name} is a number: ~ matches strings", "use == or &")


def glob_prefix(pattern: str) -> str | None:
    """'/etc/*' -> '/etc/'; None when the glob is more than a prefix."""
    body = pattern[:-1] if pattern.endswith("*") else None
    if body is None or any(ch in body for ch in "*?[\\"):
        return None
    return body


def kernel_ok(c: Cmp, f: FieldInfo) -> bool:
    """Can the kernel decide this comparison exactly?"""
    if f.kind == "int":
        return True
    text = str(c.value)
    room = min(f.capacity, MAX_KERNEL_LITERAL)
    if c.op in ("~", "!~"):
        if not any(ch in text for ch in "*?[\\"):
            return _nbytes(text) < room                                 # a plain string
        prefix = glob_prefix(text)
        return prefix is not None and _nbytes(prefix) <= room
    return _nbytes(text) < room                                         # room for the NUL


def _nbytes(text: str) -> int:
    """What the kernel compares is bytes: 15 letters can be 30 of them."""
    return len(text.encode("utf-8", "surrogateescape"))


def split(e: Expr, ok: Callable[[Cmp], bool]) -> tuple[Expr | None, bool]:
    """(kernel part, exact): the kernel part accepts every event `e` accepts (None:
    accept all); exact means it accepts nothing more, so userspace need not look."""
    if isinstance(e, Cmp):
        return (e, True) if ok(e) else (None, False)
    if isinstance(e, Not):
        inner, exact = split(e.inner, ok)
        return (Not(inner), True) if exact and inner is not None else (None, False)
    parts = [split(i, ok) for i in e.items]
    exact = all(x for _, x in parts)
    kept = tuple(p for p, _ in parts if p is not None)
    if isinstance(e, And):
        return (None if not kept else kept[0] if len(kept) == 1 else And(kept)), exact
    if len(kept) < len(parts):                 # an Or with an unknowable branch: accept all
        return None, False
    return Or(kept), exact


_INT_OPS: dict[str, Callable[[int, int], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "&": lambda a, b: bool(a & b),
}
_STR_OPS: dict[str, Callable[[str, str], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "~": fnmatch.fnmatchcase, "!~": lambda a, b: not fnmatch.fnmatchcase(a, b),
}


def evaluate(e: Expr, values: Mapping[str, object]) -> bool:
    """The whole expression on decoded values (a field that could not be read fails)."""
    if isinstance(e, Cmp):
        v = values.get(e.name)
        if v is None:
            return False
        if isinstance(v, str):
            return _STR_OPS[e.op](v, str(e.value))
        return _INT_OPS[e.op](int(v), int(e.value))     # type: ignore[arg-type]
    if isinstance(e, Not):
        return not evaluate(e.inner, values)
    if isinstance(e, And):
        return all(evaluate(i, values) for i in e.items)
    return any(evaluate(i, values) for i in e.items)


def text(e: Expr) -> str:
    """Back to filter syntax (for -v and JSON meta)."""
    if isinstance(e, Cmp):
        v = '"' + e.value.replace('"', '\\"') + '"' if isinstance(e.value, str) else str(e.value)
        return f"{e.name} {e.op} {v}"
    if isinstance(e, Not):
        return f"!({text(e.inner)})"
    joiner = " && " if isinstance(e, And) else " || "
    return "(" + joiner.join(text(i) for i in e.items) + ")"

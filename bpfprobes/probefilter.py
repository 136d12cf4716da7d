"""--filter EXPR: a predicate on captured fields, ftrace's filter syntax.

    EXPR := EXPR || EXPR | EXPR && EXPR | !EXPR | (EXPR) | NAME OP VALUE
    OP   := == != < <= > >= & ~ !~        (~ is a glob match on strings)
    VALUE:= 42 | -1 | 0x1f | ENOENT | -ENOENT | "text" | 'text'

NAME is a captured argument, or one of pid, tid, comm, cpu, latency_ns.
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

from . import errnos
from .errors import UsageError

MAX_KERNEL_LITERAL = 64       # longer string compares go to userspace (keeps the program small)
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


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise UsageError(f"cannot parse filter at {text[pos:].strip()[:20]!r}",
                             "e.g. --filter 'ret < 0' or --filter 'file ~ \"/etc/*\"'")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _literal(kind: str, text: str) -> int | str:
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    neg = text.startswith("-")
    body = text[1:] if neg else text
    if re.fullmatch(r"0[xX][0-9a-fA-F]+|[0-9]+", body):
        value = int(body, 0)
    elif errnos.code(body) is not None:
        value = errnos.code(body)
    else:
        raise UsageError(f"bad filter value {text!r}",
                         "a number, an errno name (-ENOENT) or a quoted string")
    return -value if neg else value


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.text = text

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
            return Not(self.unary())
        if self.peek() == "(":
            self.take()
            e = self.expr()
            if self.take()[1] != ")":
                raise UsageError(f"missing ')' in filter {self.text!r}")
            return e
        kind, name = self.take()
        if kind != "word" or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"expected a field name in filter, got {name!r}",
                             "NAME OP VALUE, e.g. 'ret < 0'")
        _, op = self.take()
        if op not in OPS:
            raise UsageError(f"unknown operator {op!r} in filter", "one of " + " ".join(OPS))
        kind, text = self.take()
        if kind not in ("word", "str"):
            raise UsageError(f"expected a value after {name} {op}, got {text!r}")
        return Cmp(name, op, _literal(kind, text))


def parse(text: str) -> Expr:
    """Parse (syntax only); `bind` checks names and types against a probe."""
    p = _Parser(text)
    if not p.toks:
        raise UsageError("empty filter", "e.g. --filter 'ret < 0'")
    e = p.expr()
    if p.peek() is not None:
        raise UsageError(f"unexpected {p.peek()!r} in filter {text!r}", "join tests with && or ||")
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
    if c.op in ("~", "!~"):
        if not any(ch in text for ch in "*?[\\"):
            return len(text) < min(f.capacity, MAX_KERNEL_LITERAL)      # a plain string
        prefix = glob_prefix(text)
        return prefix is not None and len(prefix) <= min(f.capacity, MAX_KERNEL_LITERAL)
    return len(text) < min(f.capacity, MAX_KERNEL_LITERAL)              # room for the NUL


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

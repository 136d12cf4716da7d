"""Probe specs in the kernel's kprobe_events / uprobe_events syntax -> frozen dataclasses.

    p[:[GRP/]EVENT] [MOD:]SYM[+OFFS] [ARGS]      kprobe (SYM%return: kretprobe)
    r[MAXACTIVE][:[GRP/]EVENT] [MOD:]SYM [ARGS]  kretprobe
    p[:[GRP/]EVENT] PATH:SYM[+OFFS] [ARGS]       uprobe (PATH contains '/'); PATH:0xOFFSET too
    r[:[GRP/]EVENT] PATH:SYM [ARGS]              uretprobe
    t:SUBSYS:EVENT [FIELD ...]                   tracepoint (also t:SUBSYS/EVENT)

Short form (perf-tools style): `p:SYM [ARGS]` probes SYM itself when the next word
is an argument rather than a target, e.g. `r:do_sys_open $retval` or
`p:do_sys_openat2 filename:string`. A bare word after `p:NAME` is the kernel's
target symbol (`p:myopen do_sys_open`); write `p SYM param` to name an untyped
BTF parameter.

ARGS are `[NAME=]FETCHARG[:TYPE]`: %REG, $argN, $retval, $comm, $stack, $stackN,
@SYM[+|-OFFS], +|-[u]OFFS(FETCHARG), or, for kernel functions, a parameter name
(BtfParam, resolved by resolve_btf_params with BTF). Tracepoint ARGS are
format-file field names (Field).

String types: `string` / `ustring` on any fetcharg mean "a NUL-terminated string
at this address". For a value (register, $argN, $retval, $stackN, parameter) the
value is the pointer, so `$arg2:string` is `+0(%si):string`; for a dereference
or @SYM the string sits where that memory read would have read (the kernel's
own meaning of `+0(%si):string`). `ustring` means user memory: parse() turns a
string read through a `+u` dereference, and every string in a uprobe, into
`ustring`, so consumers only look at ArgType.kind. `$comm` is always `string`.

Everything is validated here, before anything touches the kernel; every bad
input raises UsageError(what, hint). No bcc, no root. Spec text must be UTF-8,
and a uprobe PATH one word the kernel reads back as itself (why_not_one_word:
no space, control character or 0xA0 byte), so that to_kprobe_events, which
checks its own line again, can never write a second event or argument.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence, Union

from bpfprobes.base.errors import UsageError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel.arch import Abi

__all__ = [
    "ArgType", "TYPES", "Reg", "Arg", "Retval", "Comm", "Stack", "StackPtr", "Sym", "Deref",
    "Field", "BtfParam", "Node", "FetchArg", "ProbeSpec", "DEFAULT_GROUP",
    "parse", "parse_all", "resolve_btf_params", "validate_fields", "to_kprobe_events",
    "why_not_one_word",
]

DEFAULT_GROUP = "bpfprobes"
MAX_ARGS = 128            # the kernel's MAX_TRACE_ARGS
MAX_DEPTH = 8             # nested dereferences; the kernel has 16 fetch ops in all
MAX_NAME = 63             # the kernel's MAX_EVENT_NAME_LEN, minus the NUL
MAX_MAXACTIVE = 4096      # the kernel's KRETPROBE_MAXACTIVE_MAX
MAX_USDT_ARGS = 12        # <sys/sdt.h>'s STAP_PROBE12
# names the kernel keeps for itself, and ours (the tracefs backend's bpfprobes_comm)
RESERVED_PREFIXES = ("common_", "__probe_", "bpfprobes_")

FORMS = ("expected p[:[GRP/]EVENT] [MOD:]SYM[+OFFS] [ARGS], r[N][:[GRP/]EVENT] SYM [ARGS], "
         "p[:EVENT] /PATH:SYM [ARGS], t:SUBSYS:EVENT [FIELDS] or u:BINARY:[PROVIDER:]NAME "
         "[ARGS]")
FETCH_FORMS = ("expected %REG, $argN, $retval, $comm, $stack, $stackN, @SYM[+OFFS], "
               "+|-[u]OFFS(FETCHARG) or a parameter name")


# ---------------------------------------------------------------- types

@dataclass(frozen=True)
class ArgType:
    kind: str   # 'u' | 's' | 'x' | 'string' | 'ustring' | 'symbol'
    bits: int   # 8..64; 0 for strings and symbol

    @property
    def is_string(self) -> bool:
        return self.kind in ("string", "ustring")

    def __str__(self) -> str:
        return f"{self.kind}{self.bits}" if self.bits else self.kind


TYPES: dict[str, ArgType] = {
    **{f"{k}{b}": ArgType(k, b) for k in "usx" for b in (8, 16, 32, 64)},
    **{k: ArgType(k, 0) for k in ("string", "ustring", "symbol")},
}
STRING = TYPES["string"]
USTRING = TYPES["ustring"]


# ---------------------------------------------------------------- fetch nodes

@dataclass(frozen=True)
class Reg:
    name: str           # the Abi's canonical name ('si', 'x1', 'r1')


@dataclass(frozen=True)
class Arg:
    index: int          # 1-based function argument


@dataclass(frozen=True)
class Retval:
    pass


@dataclass(frozen=True)
class Comm:
    pass


@dataclass(frozen=True)
class Stack:
    index: int          # $stackN: N-th word on the stack


@dataclass(frozen=True)
class StackPtr:
    pass                # $stack: the stack pointer itself


@dataclass(frozen=True)
class Sym:
    name: str           # kernel global
    offset: int = 0


@dataclass(frozen=True)
class Deref:
    offset: int
    inner: "Node"
    user: bool = False  # +u: the memory is user memory


@dataclass(frozen=True)
class Imm:
    value: int          # a constant (a USDT argument the compiler knew)


@dataclass(frozen=True)
class Field:
    name: str           # tracepoint format-file field


@dataclass(frozen=True)
class BtfParam:
    name: str           # kernel function parameter; resolve_btf_params -> Arg


Node = Union[Reg, Arg, Retval, Comm, Stack, StackPtr, Sym, Deref, Field, BtfParam, Imm]


@dataclass(frozen=True)
class FetchArg:
    name: str
    fetch: Node
    type: ArgType
    explicit_type: bool = False   # False: `type` is a default (BTF / format file may know better)


@dataclass(frozen=True)
class ProbeSpec:
    kind: str           # 'kprobe' | 'kretprobe' | 'uprobe' | 'uretprobe' | 'tracepoint'
    group: str          # tracepoints: the subsystem
    event: str
    symbol: str         # '' for a uprobe at PATH:0xOFFSET; tracepoints: the event
    module: str | None
    path: str | None
    offset: int         # SYM+OFFS; for PATH:0xOFFSET the file offset itself
    maxactive: int
    args: tuple[FetchArg, ...]
    text: str
    usdt: str | None = None     # u:: "PROVIDER:NAME" or ":NAME" (any provider), until resolved

    @property
    def is_return(self) -> bool:
        return self.kind in ("kretprobe", "uretprobe")

    @property
    def is_kernel(self) -> bool:
        return self.kind in ("kprobe", "kretprobe", "tracepoint")

    @property
    def is_uprobe(self) -> bool:
        return self.kind in ("uprobe", "uretprobe")


# ---------------------------------------------------------------- lexical pieces

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_NUM = r"0[xX][0-9a-fA-F]+|[0-9]+"
_SYMBOL = r"[A-Za-z_.][A-Za-z0-9_.]*"       # kernel symbols may hold '.' (foo.isra.0)
_IDENT_RE = re.compile(_IDENT)
_NUM_RE = re.compile(_NUM)
_HEAD_RE = re.compile(r"([prtu])([0-9]*)(?::(.*))?", re.S)
_EVENT_RE = re.compile(rf"(?:({_IDENT})/)?({_IDENT})?")
_TRACEPOINT_RE = re.compile(rf"({_IDENT})[:/]({_IDENT})")
_SYM_OFFS_RE = re.compile(rf"({_SYMBOL})(?:\+({_NUM}))?")
_MODULE_RE = re.compile(r"[A-Za-z0-9_-]+")
_BINARY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")       # bash, libc.so.6, libstdc++
_DEREF_RE = re.compile(rf"([+-])(u?)({_NUM})\((.*)\)", re.S)
_GSYM_RE = re.compile(rf"@({_SYMBOL})(?:([+-])({_NUM}))?")
_VAR_RE = re.compile(r"\$(arg|stack)([0-9]+)")
_BITFIELD_RE = re.compile(r"b[0-9]+@[0-9]+/[0-9]+")
_RETURN_SUFFIX = "%return"


def _int(text: str, what: str, limit: int = 2**64 - 1) -> int:
    """Decimal or 0x hex (already matched by _NUM); bounded so int() cannot fail."""
    if len(text) > 20:
        raise UsageError(f"{what} {text} is too large", f"at most {limit:#x}")
    value = int(text[2:], 16) if text[:2].lower() == "0x" else int(text, 10)
    if value > limit:
        raise UsageError(f"{what} {text} is too large", f"at most {limit:#x}")
    return value


def _event_name(text: str) -> str:
    """A kernel-acceptable event name from a symbol or file name."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if not name or name[0].isdigit():
        name = "_" + name
    return name[:MAX_NAME]


# ---------------------------------------------------------------- parse context

@dataclass(frozen=True)
class _Ctx:
    kind: str
    abi: Abi
    usdt: bool = False          # $argN: the probe note's N-th argument, not a register

    @property
    def is_return(self) -> bool:
        return self.kind in ("kretprobe", "uretprobe")

    @property
    def user_memory(self) -> bool:
        return self.kind in ("uprobe", "uretprobe")


# ---------------------------------------------------------------- fetchargs

def _reg(s: str, ctx: _Ctx, depth: int) -> Node:
    name = s[1:]
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise UsageError(f"bad register {s!r}", f"write %REG, e.g. %{ctx.abi.func_args[0]}")
    canon = ctx.abi.canonical(name)
    if canon is None:
        ctx.abi.member(name)        # raises the UsageError that names the right register
    return Reg(canon)


def _var(s: str, ctx: _Ctx, depth: int) -> Node:
    fixed = _FIXED_VARS.get(s)
    if fixed is not None:
        return fixed(ctx)
    m = _VAR_RE.fullmatch(s)
    if m is None:
        raise UsageError(f"unknown variable {s!r}",
                         "known: $argN (N from 1), $retval, $comm, $stack, $stackN")
    n = _int(m[2], s, limit=1 << 16)
    return _arg(n, ctx) if m[1] == "arg" else Stack(n)


def _retval(ctx: _Ctx) -> Node:
    if not ctx.is_return:
        raise UsageError("$retval is only available in return probes",
                         "use r: (or SYM%return) instead of p:")
    return Retval()


_FIXED_VARS: dict[str, Callable[[_Ctx], Node]] = {
    "$retval": _retval,
    "$comm": lambda ctx: Comm(),
    "$stack": lambda ctx: StackPtr(),
}


def _arg(n: int, ctx: _Ctx) -> Node:
    if n < 1:
        raise UsageError(f"$arg{n}: arguments count from 1", "write $arg1 for the first argument")
    if ctx.is_return:
        raise UsageError(f"$arg{n} is not available in a return probe: "
                         "argument registers are overwritten by then",
                         "record it with a p: probe on the same function")
    if ctx.usdt:
        if n > MAX_USDT_ARGS:
            raise UsageError(f"$arg{n}: a USDT probe has at most {MAX_USDT_ARGS} arguments")
        return Arg(n)               # where the note says, once the binary is read
    ctx.abi.arg_register(n)         # raises when the argument is on the stack
    return Arg(n)


def _gsym(s: str, ctx: _Ctx, depth: int) -> Node:
    if ctx.user_memory:
        raise UsageError(f"{s!r}: @SYM reads kernel globals and is not available in uprobes",
                         "dereference a register or $argN instead, e.g. +0(%" +
                         ctx.abi.func_args[0] + ")")
    m = _GSYM_RE.fullmatch(s)
    if m is None:
        if re.match(r"@[+-]?[0-9]", s):
            raise UsageError(f"{s!r}: absolute addresses are not supported", "use @SYMBOL[+OFFS]")
        raise UsageError(f"bad global {s!r}", "expected @SYMBOL[+|-OFFS], e.g. @jiffies")
    offset = _int(m[3], s, limit=2**63 - 1) if m[3] else 0
    return Sym(m[1], -offset if m[2] == "-" else offset)


def _deref(s: str, ctx: _Ctx, depth: int) -> Node:
    if depth >= MAX_DEPTH:
        raise UsageError(f"{s!r} nests more than {MAX_DEPTH} dereferences",
                         "simplify the expression")
    m = _DEREF_RE.fullmatch(s)
    if m is None or not _balanced(m[4]):
        raise UsageError(f"bad dereference {s!r}", "expected +|-[u]OFFS(FETCHARG), e.g. +8(+0(%" +
                         ctx.abi.func_args[0] + "))")
    if not m[4]:
        raise UsageError(f"empty dereference {s!r}", "put a fetcharg inside the parentheses")
    inner = _node(m[4], ctx, depth + 1)
    if isinstance(inner, Comm):
        raise UsageError(f"{s!r}: $comm is a string, not an address", "use $comm on its own")
    offset = _int(m[3], s, limit=2**63 - 1)
    return Deref(-offset if m[1] == "-" else offset, inner, user=bool(m[2]) or ctx.user_memory)


def _identifier(s: str, ctx: _Ctx) -> Node:
    if ctx.kind == "kprobe":
        return BtfParam(s)
    if ctx.kind == "kretprobe":
        raise UsageError(f"parameter {s!r} is not available in a return probe",
                         "record it with a p: probe on the same function")
    raise UsageError(f"{s!r}: uprobes have no parameter names (no BTF for user code)",
                     "use $argN or %REG")


_NODE_PARSERS: dict[str, Callable[[str, _Ctx, int], Node]] = {
    "%": _reg, "$": _var, "@": _gsym, "+": _deref, "-": _deref,
}


def _node(s: str, ctx: _Ctx, depth: int) -> Node:
    parser = _NODE_PARSERS.get(s[:1])
    if parser is not None:
        return parser(s, ctx, depth)
    if _IDENT_RE.fullmatch(s):
        return _identifier(s, ctx)
    raise UsageError(f"cannot parse fetcharg {s!r}", FETCH_FORMS)


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += (c == "(") - (c == ")")
        if depth < 0:
            return False
    return depth == 0


def _split_type(s: str) -> tuple[str, str | None]:
    """FETCHARG[:TYPE], cutting at the last ':' outside parentheses."""
    depth, cut = 0, -1
    for i, c in enumerate(s):
        depth += (c == "(") - (c == ")")
        if c == ":" and depth == 0:
            cut = i
    return (s, None) if cut < 0 else (s[:cut], s[cut + 1:])


def _type(text: str, token: str) -> ArgType:
    t = TYPES.get(text)
    if t is not None:
        return t
    if _BITFIELD_RE.fullmatch(text):
        raise UsageError(f"bitfield type {text!r} in {token!r} is not supported yet",
                         "fetch the containing word (u8/u16/u32/u64) and mask it")
    if "[" in text:
        raise UsageError(f"array type {text!r} in {token!r} is not supported",
                         "fetch each element with its own +OFFS(...)")
    raise UsageError(f"unknown type {text!r} in {token!r}", "valid types: " + " ".join(TYPES))


def _split_arg(token: str) -> tuple[str | None, str, str | None]:
    """[NAME=]FETCHARG[:TYPE] -> (name, fetcharg, type text)."""
    name = None
    body = token
    if "=" in token:
        name, _, body = token.partition("=")
        if not _IDENT_RE.fullmatch(name):
            raise UsageError(f"bad argument name {name!r} in {token!r}",
                             "names are C identifiers: NAME=FETCHARG[:TYPE]")
    if not _balanced(body):
        raise UsageError(f"unbalanced parentheses in {token!r}", "expected +OFFS(FETCHARG)")
    body, type_text = _split_type(body)
    if not body:
        raise UsageError(f"missing fetcharg in {token!r}", FETCH_FORMS)
    if type_text == "":
        raise UsageError(f"missing type after ':' in {token!r}", "valid types: " + " ".join(TYPES))
    return name, body, type_text


def _arg_type(node: Node, type_text: str | None, token: str, ctx: _Ctx) -> ArgType:
    if isinstance(node, Comm):
        if type_text not in (None, "string"):
            raise UsageError(f"$comm is a string; {token!r} asks for {type_text}",
                             "drop the type or write :string")
        return STRING                               # comm lives in kernel memory
    if type_text is None:
        return TYPES[f"x{ctx.abi.pointer_size * 8}"]   # the kernel's default
    t = _type(type_text, token)
    if t.kind == "symbol" and ctx.user_memory:
        raise UsageError(f"{token!r}: type symbol resolves kernel addresses, not in uprobes",
                         "use x64 to print the address")
    if t == STRING and (ctx.user_memory or (isinstance(node, Deref) and node.user)):
        return USTRING
    return t


def _fetch_arg(token: str, position: int, ctx: _Ctx) -> FetchArg:
    name, body, type_text = _split_arg(token)
    if ctx.kind == "tracepoint":
        if not _IDENT_RE.fullmatch(body):
            raise UsageError(f"bad tracepoint field {body!r} in {token!r}",
                             "tracepoint arguments are format-file field names: "
                             "[NAME=]FIELD[:TYPE], e.g. filename:string")
        node: Node = Field(body)
    else:
        node = _node(body, ctx, 0)
    default_name = node.name if isinstance(node, (Field, BtfParam)) else f"arg{position}"
    return FetchArg(name or default_name, node, _arg_type(node, type_text, token, ctx),
                    explicit_type=type_text is not None)


def _fetch_args(tokens: Sequence[str], ctx: _Ctx) -> tuple[FetchArg, ...]:
    if len(tokens) > MAX_ARGS:
        raise UsageError(f"{len(tokens)} arguments; the kernel allows at most {MAX_ARGS}",
                         "split them over two probes")
    args = tuple(_fetch_arg(tok, i, ctx) for i, tok in enumerate(tokens, 1))
    seen: set[str] = set()
    for a in args:
        if a.name.startswith(RESERVED_PREFIXES):
            raise UsageError(f"argument name {a.name!r} is reserved by the kernel",
                             "pick a name without the common_, __probe_ or bpfprobes_ prefix")
        if a.name in seen:
            raise UsageError(f"duplicate argument name {a.name!r}",
                             "give each argument its own NAME=; unnamed ones are arg1, arg2, "
                             "... by position")
        seen.add(a.name)
    return args


# ---------------------------------------------------------------- probe heads and targets

def _looks_like_fetcharg(token: str) -> bool:
    """After `p:NAME`, tells an argument (short form) from a probe target (kernel form)."""
    return ("=" in token or token[:1] in "$%@+-\\"
            or token.rpartition(":")[2] in TYPES)


def _locate_target(head: str, name_part: str | None,
                   rest: list[str]) -> tuple[str | None, str | None, str, list[str]]:
    """-> (group, event, target token, argument tokens)."""
    m = _EVENT_RE.fullmatch(name_part) if name_part else None
    if name_part and m is None:      # 'p:do_sys_open+4', 'p:/bin/sh:main': the head is the target
        return None, None, name_part, rest
    group, event = (m[1], m[2]) if m else (None, None)
    if rest and not _looks_like_fetcharg(rest[0]):       # kernel form: p:[GRP/]EVENT TARGET
        return group, event, rest[0], rest[1:]
    if group is None and event is not None:              # short form: p:SYM [ARGS]
        return None, None, event, rest
    got = f", got {rest[0]!r}" if rest else ""
    raise UsageError(f"missing probe target after {head!r}{got}",
                     "e.g. 'p:myopen do_sys_open', 'p:do_sys_open' or 'p /bin/bash:readline'")


@dataclass(frozen=True)
class _Target:
    is_return: bool
    symbol: str
    module: str | None
    path: str | None
    offset: int


def _kernel_target(tok: str, is_return: bool) -> _Target:
    module, sep, rest = tok.rpartition(":")
    if sep and not _MODULE_RE.fullmatch(module):
        raise UsageError(f"bad module name {module!r} in {tok!r}",
                         "kernel targets are [MOD:]SYM[+OFFS]; a uprobe's is PATH:SYM "
                         "(./a.out:main) or a program or library by name (bash:readline, "
                         "libc:malloc)")
    if re.match(r"[0-9]", rest):
        raise UsageError(f"{tok!r}: probing a raw address is not supported",
                         "give a symbol name, e.g. do_sys_open+0x10")
    m = _SYM_OFFS_RE.fullmatch(rest)
    if m is None:
        raise UsageError(f"bad probe target {tok!r}", "expected [MOD:]SYM[+OFFS], e.g. do_sys_open")
    offset = _int(m[2], f"offset in {tok!r}") if m[2] else 0
    return _Target(is_return, m[1], module or None, None, offset)


# Bytes the kernel's argv_split() takes for spaces (lib/ctype.c: 0xA0 too, which is
# inside the UTF-8 of many letters): a path holding one would reach uprobe_events
# as two words, i.e. as another argument.
_KERNEL_SPACE = re.compile(rb"[\t\n\v\f\r \xa0]")


def why_not_one_word(text: str) -> str | None:
    """Why `text` cannot be one word of a kprobe_events line, or None."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds bytes that are not UTF-8"
    if not text.isprintable():
        return "holds a control, format or space character"
    if _KERNEL_SPACE.search(raw):
        return "holds a character the kernel would read as a space"
    return None


def _user_target(tok: str, is_return: bool) -> _Target:
    path, sep, loc = tok.rpartition(":")
    if not sep or not path or not loc:
        raise UsageError(f"bad uprobe target {tok!r}",
                         "expected PATH:SYM[+OFFS] or PATH:0xOFFSET, e.g. /bin/bash:readline")
    why = why_not_one_word(path)
    if why is not None:
        raise UsageError(f"uprobe path {path!r} {why}: uprobe_events cannot name it",
                         "probe it through a symlink or a copy with a plain name")
    if _NUM_RE.fullmatch(loc):
        return _Target(is_return, "", None, path, _int(loc, f"offset in {tok!r}"))
    m = _SYM_OFFS_RE.fullmatch(loc)
    if m is None:
        raise UsageError(f"bad uprobe symbol {loc!r} in {tok!r}",
                         "expected PATH:SYM[+OFFS] or PATH:0xOFFSET")
    offset = _int(m[2], f"offset in {tok!r}") if m[2] else 0
    return _Target(is_return, m[1], None, path, offset)


def _by_name(tok: str, binary: Callable[[str], str | None] | None) -> str:
    """NAME:SYM where NAME is a binary, not a kernel module (`bash:readline`,
    `libc:malloc`): PATH:SYM with the path `binary` finds (kernel/binaries.py)."""
    name, sep, rest = tok.rpartition(":")
    if binary is None or not sep or "/" in name or not _BINARY_RE.fullmatch(name):
        return tok
    path = binary(name)
    return f"{path}:{rest}" if path else tok


def _target(tok: str, letter: str, binary: Callable[[str], str | None] | None = None) -> _Target:
    is_return = letter == "r"
    if tok.endswith(_RETURN_SUFFIX):
        if is_return:
            raise UsageError(f"{tok!r}: r: probes already fire on return", "drop %return")
        tok, is_return = tok[:-len(_RETURN_SUFFIX)], True
    tok = _by_name(tok, binary)
    target = (_user_target if "/" in tok else _kernel_target)(tok, is_return)
    if is_return and target.offset and target.symbol:
        raise UsageError(f"{tok!r}: a return probe fires when the function returns; "
                         "+OFFS is only allowed on p: probes", "drop the offset or use p:")
    return target


_KINDS = {(False, False): "kprobe", (True, False): "kretprobe",
          (False, True): "uprobe", (True, True): "uretprobe"}


def _default_event(t: _Target) -> str:
    if not t.symbol:                               # PATH:0xOFFSET
        return _event_name(f"{os.path.basename(t.path or '')}_{t.offset:#x}")
    return _event_name(f"{t.symbol}_{t.offset}" if t.offset else t.symbol)


def _check_name(name: str, what: str) -> str:
    if len(name) > MAX_NAME:
        raise UsageError(f"{what} name {name[:20]!r}... is longer than {MAX_NAME} characters",
                         "pick a shorter name")
    return name


def _maxactive(text: str, letter: str, head: str) -> int:
    if not text:
        return 0
    if letter != "r":
        raise UsageError(f"{head!r}: only r<N>: probes take MAXACTIVE", "e.g. r16:do_sys_open")
    return _int(text, "MAXACTIVE", limit=MAX_MAXACTIVE)


def _parse_tracepoint(text: str, tokens: list[str], name_part: str | None,
                      maxactive: str, abi: Abi) -> ProbeSpec:
    if maxactive:
        raise UsageError(f"{tokens[0]!r}: tracepoints take no MAXACTIVE", "write t:SUBSYS:EVENT")
    m = _TRACEPOINT_RE.fullmatch(name_part or "")
    if m is None:
        raise UsageError(f"bad tracepoint {tokens[0]!r}",
                         "expected t:SUBSYS:EVENT, e.g. t:syscalls:sys_enter_openat")
    args = _fetch_args(tokens[1:], _Ctx("tracepoint", abi))
    return ProbeSpec("tracepoint", m[1], m[2], m[2], None, None, 0, 0, args, text)


_USDT_NAME = re.compile(rf"(?:({_IDENT}):)?({_IDENT})")


def _parse_usdt(text: str, tokens: list[str], name_part: str | None, maxactive: str,
                abi: Abi, binary: Callable[[str], str | None] | None) -> ProbeSpec:
    """u:BINARY:[PROVIDER:]NAME [ARGS] (BCC trace's u:, bpftrace's usdt:): a uprobe on
    each site of the probe, found in the binary's notes when the plan reads it."""
    hint = "expected u:BINARY:[PROVIDER:]NAME, e.g. u:python3:python:function__entry"
    if maxactive:
        raise UsageError(f"{tokens[0]!r}: USDT probes take no MAXACTIVE", hint)
    parts = (name_part or "").split(":")
    if len(parts) < 2 or len(parts) > 3 or not all(parts):
        raise UsageError(f"bad USDT probe {tokens[0]!r}", hint)
    m = _USDT_NAME.fullmatch(":".join(parts[1:]))
    if m is None:
        raise UsageError(f"bad USDT probe name {':'.join(parts[1:])!r}", hint)
    path = _by_name(f"{parts[0]}:x", binary).rpartition(":")[0]
    if "/" not in path:
        if binary is None or not _BINARY_RE.fullmatch(path):
            raise UsageError(f"bad USDT binary {path!r}", hint)
        raise UsageError(f"{path}: no program on PATH or library in the loader's cache "
                         "of that name", "give its path")
    why = why_not_one_word(path)
    if why is not None:
        raise UsageError(f"USDT binary {path!r} {why}", "probe it through a symlink or a copy")
    args = _fetch_args(tokens[1:], _Ctx("uprobe", abi, usdt=True))
    return ProbeSpec("uprobe", DEFAULT_GROUP, _check_name(m[2], "event"), "", None, path, 0, 0,
                     args, text, usdt=f"{m[1] or ''}:{m[2]}")


def parse(text: str, abi: Abi, binary: Callable[[str], str | None] | None = None) -> ProbeSpec:
    """Parse and fully validate one probe spec for architecture `abi`. `binary`:
    NAME -> a binary's path, for targets named as the peers name them (bash:readline);
    None keeps every NAME: a kernel module's."""
    if not isinstance(text, str):
        raise UsageError(f"probe spec must be text, not {type(text).__name__}", FORMS)
    try:
        text.encode("utf-8")        # argv holds undecodable bytes as surrogate escapes
    except UnicodeEncodeError:
        raise UsageError(f"probe spec '{for_terminal(text)}' is not valid UTF-8", FORMS) from None
    text = text.strip()
    tokens = text.split()
    if not tokens:
        raise UsageError("empty probe spec", FORMS)
    head = _HEAD_RE.fullmatch(tokens[0])
    if head is None:
        if tokens[0].startswith("-"):
            raise UsageError("removing probes ('-:EVENT') is not supported here",
                             "bpfprobes removes its own probes on exit")
        raise UsageError(f"unknown probe type {tokens[0]!r}", FORMS)
    letter, maxactive_text, name_part = head.groups()
    if letter == "t":
        return _parse_tracepoint(text, tokens, name_part, maxactive_text, abi)
    if letter == "u":
        return _parse_usdt(text, tokens, name_part, maxactive_text, abi, binary)
    maxactive = _maxactive(maxactive_text, letter, tokens[0])
    group, event, target_tok, arg_tokens = _locate_target(tokens[0], name_part, tokens[1:])
    target = _target(target_tok, letter, binary)
    kind = _KINDS[(target.is_return, target.path is not None)]
    if maxactive and target.path is not None:
        raise UsageError(f"{tokens[0]!r}: MAXACTIVE applies to kretprobes, not uretprobes",
                         "write r: without a number")
    args = _fetch_args(arg_tokens, _Ctx(kind, abi))
    return ProbeSpec(kind, _check_name(group or DEFAULT_GROUP, "group"),
                     _check_name(event or _default_event(target), "event"),
                     target.symbol, target.module, target.path, target.offset, maxactive,
                     args, text)


def parse_all(texts: Iterable[str], abi: Abi,
              binary: Callable[[str], str | None] | None = None) -> list[ProbeSpec]:
    """parse() each spec, in order."""
    return [parse(t, abi, binary) for t in texts]


# ---------------------------------------------------------------- BTF parameters and fields

@dataclass(frozen=True)
class _Param:
    name: str
    index: int
    is_char_pointer: bool
    size: int
    signed: bool
    is_pointer: bool


def _param(p: Any) -> _Param:
    """Accept btf.Param objects or (name, index, is_char_pointer, size, signed) tuples."""
    if isinstance(p, tuple):
        name, index, is_char_pointer, size, signed = p[:5]
        return _Param(name, index, bool(is_char_pointer), size, bool(signed), bool(is_char_pointer))
    is_pointer = "*" in getattr(p, "c_type", "") or bool(p.is_char_pointer)
    return _Param(p.name, p.index, bool(p.is_char_pointer), p.size, bool(p.signed), is_pointer)


_BITS = {1: 8, 2: 16, 4: 32, 8: 64}


def _param_type(p: _Param, func: str) -> ArgType:
    bits = _BITS.get(p.size)
    if bits is None:
        raise UsageError(f"parameter {p.name!r} of {func}() is {p.size} bytes: only scalars "
                         "and pointers can be fetched", "fetch a member with +OFFS($argN)")
    kind = "x" if p.is_pointer else ("s" if p.signed else "u")
    return TYPES[f"{kind}{bits}"]       # char * stays a pointer unless :string was asked


def _replace_params(node: Node, params: dict[str, _Param], func: str,
                    listing: str, abi: Abi | None) -> Node:
    if isinstance(node, Deref):
        return replace(node, inner=_replace_params(node.inner, params, func, listing, abi))
    if not isinstance(node, BtfParam):
        return node
    p = params.get(node.name)
    if p is None:
        raise UsageError(f"{func}() has no parameter {node.name!r}", listing)
    if abi is not None:
        abi.arg_register(p.index)
    return Arg(p.index)


def _has_params(node: Node) -> bool:
    return isinstance(node, BtfParam) or (isinstance(node, Deref) and _has_params(node.inner))


def resolve_btf_params(spec: ProbeSpec, lookup: Callable[[str], Sequence[Any]],
                       abi: Abi | None = None) -> ProbeSpec:
    """Replace each BtfParam with Arg(index) using `lookup(func) -> params`.

    `lookup` returns btf.Param-like objects (name, index, size, signed,
    is_char_pointer, c_type) or (name, index, is_char_pointer, size, signed)
    tuples. An argument with no explicit type gets one from its parameter
    (pointer -> xN, signed int -> sN, else uN); `char *` becomes a string only
    when the user wrote :string. With `abi`, stack-passed parameters are refused.
    """
    if not any(_has_params(a.fetch) for a in spec.args):
        return spec
    params = {p.name: p for p in map(_param, lookup(spec.symbol) or ())}
    listing = (f"parameters of {spec.symbol}: " + ", ".join(params)) if params else \
        f"{spec.symbol}() takes no parameters (or BTF has none)"
    args = []
    for a in spec.args:
        fetch = _replace_params(a.fetch, params, spec.symbol, listing, abi)
        atype = a.type
        if isinstance(a.fetch, BtfParam) and not a.explicit_type:
            atype = _param_type(params[a.fetch.name], spec.symbol)
        args.append(replace(a, fetch=fetch, type=atype))
    return replace(spec, args=tuple(args))


def _fields(node: Node) -> Iterable[Field]:
    if isinstance(node, Field):
        yield node
    elif isinstance(node, Deref):
        yield from _fields(node.inner)


def validate_fields(spec: ProbeSpec, field_names: set[str]) -> None:
    """Refuse Field nodes that the tracepoint's format file does not list."""
    for a in spec.args:
        for f in _fields(a.fetch):
            if f.name not in field_names:
                raise UsageError(f"tracepoint {spec.group}:{spec.event} has no field {f.name!r}",
                                 "fields: " + ", ".join(sorted(field_names)))


# ---------------------------------------------------------------- kprobe_events text

def _fetch_text(node: Node, spec: ProbeSpec, abi: Abi) -> str:
    if isinstance(node, Reg):
        return f"%{node.name}"
    if isinstance(node, Arg):
        return "%" + abi.arg_register(node.index)     # portable to kernels without $argN
    if isinstance(node, Stack):
        return f"$stack{node.index}"
    if isinstance(node, Imm):
        return f"\\{node.value}"
    if isinstance(node, Sym):
        return f"@{node.name}" + (f"{node.offset:+d}" if node.offset else "")
    if isinstance(node, Deref):
        user = "u" if node.user and not spec.is_uprobe else ""   # all uprobe memory is user memory
        sign = "-" if node.offset < 0 else "+"
        return f"{sign}{user}{abs(node.offset)}({_fetch_text(node.inner, spec, abi)})"
    if isinstance(node, BtfParam):
        raise UsageError(f"parameter {node.name!r} needs BTF to become a register",
                         "this kernel has no BTF: use $argN or %REG")
    if isinstance(node, Field):
        raise UsageError(f"field {node.name!r} belongs to a tracepoint", "tracepoints have no "
                         "kprobe_events line")
    return _SIMPLE_TEXT[type(node)]


_SIMPLE_TEXT = {Retval: "$retval", Comm: "$comm", StackPtr: "$stack"}


def _arg_text(a: FetchArg, spec: ProbeSpec, abi: Abi) -> str:
    if isinstance(a.fetch, Comm):
        return f"{a.name}=$comm"
    fetch = _fetch_text(a.fetch, spec, abi)
    atype = a.type
    if atype.is_string and not isinstance(a.fetch, (Deref, Sym)):
        fetch = f"+0({fetch})"                   # older kernels take strings only from memory
    if atype == USTRING and spec.is_uprobe:
        atype = STRING                           # uprobe_events has only 'string'
    return f"{a.name}={fetch}:{atype}"


def _target_text(spec: ProbeSpec, uprobe_offset: int | None, ref_ctr: int | None) -> str:
    offs = f"+{spec.offset}" if spec.offset else ""
    if spec.path is None:
        return (f"{spec.module}:" if spec.module else "") + spec.symbol + offs
    if uprobe_offset is not None:               # already SYM+OFFS: never add OFFS again
        sem = f"({ref_ctr:#x})" if ref_ctr else ""      # a USDT semaphore: PATH:OFFS(REF)
        return f"{spec.path}:{uprobe_offset:#x}{sem}"
    if not spec.symbol:
        return f"{spec.path}:{spec.offset:#x}"
    return f"{spec.path}:{spec.symbol}{offs}"


def _one_line(parts: list[str]) -> str:
    """The words joined, or UsageError unless the kernel will split the line into
    exactly these words (parse() refuses such input first; this is the backstop)."""
    for part in parts:
        why = "is empty" if not part else why_not_one_word(part)
        if why is not None:
            raise UsageError(f"refusing to write a dynamic event: {part!r} {why}",
                             "bpfprobes should have refused this spec earlier: please report it")
    line = " ".join(parts)
    if [w for w in _KERNEL_SPACE.split(line.encode()) if w] != [p.encode() for p in parts]:
        raise UsageError(f"refusing to write a dynamic event: {line!r} is not "
                         f"{len(parts)} words", "please report it")
    return line


def to_kprobe_events(spec: ProbeSpec, abi: Abi, uprobe_offset: int | None = None,
                     ref_ctr: int | None = None) -> str | None:
    """The spec's line for kprobe_events / uprobe_events, as perf-tools would write it.

    $argN becomes the arch register; BtfParam must be resolved first. For a
    uprobe, `uprobe_offset` is the file offset where the probe lands, SYM+OFFS
    included (elfsym.Elf.place computes it; spec.path should be the path it
    resolved); without it the line keeps PATH:SYM[+OFFS]. Tracepoints have no
    line: None. The line is always one line of exactly the words meant.
    """
    if spec.kind == "tracepoint":
        return None
    head = f"r{spec.maxactive or ''}" if spec.is_return else "p"
    parts = [f"{head}:{spec.group}/{spec.event}", _target_text(spec, uprobe_offset, ref_ctr)]
    parts += [_arg_text(a, spec, abi) for a in spec.args]
    return _one_line(parts)

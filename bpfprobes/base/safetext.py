"""Text from the traced system, made safe for root's terminal: the one escaping function.

Any user can name a file or a process with ESC sequences (`\\033]0;...\\007`
retitles a terminal, others rewrite the screen or paste into the shell), and
with bidi overrides that reorder what is shown. Every text field that reaches
a terminal goes through `for_terminal`, once, where it is printed.

The rule is Python's own (`str.isprintable`, as `repr` uses it): a character
is shown as it is when it is printable, else as an escape. So letters of every
script, digits, punctuation, symbols and combining marks stay as they are;
control characters (C0, DEL, C1), format characters (bidi embeddings,
overrides and isolates, zero-width characters, BOM, tags), line and paragraph
separators, spaces other than ASCII's, private-use and unassigned code points
become escapes. `\\n`, `\\t` and `\\r` by name; a C0 control or DEL as `\\xNN`;
a byte that was not UTF-8 (a surrogate escape, below) as `\\xNN`, the byte
itself; any other character as `\\uNNNN` or `\\UNNNNNNNN` (so the C1 control
U+009B shows as `\\u009b`, apart from a stray 0x9b byte, `\\x9b`). A backslash
is left alone: text output is for reading, JSON is the exact record.

Kernel text becomes str with `decode_exact` (UTF-8, `errors="surrogateescape"`):
a byte that is not UTF-8 becomes U+DC80..U+DCFF and nothing is lost. JSON
written with `ensure_ascii` carries such a character as `\\udcNN`, and
`json.loads(line)[k].encode("utf-8", "surrogateescape")` gives the exact bytes.
"""
from __future__ import annotations

import sys
from typing import TextIO

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(n: int) -> str:
    c = chr(n)
    if c in _NAMED:
        return _NAMED[c]
    if n < 0x80:
        return f"\\x{n:02x}"
    if 0xDC80 <= n <= 0xDCFF:               # an undecodable byte (surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


class _Shown(dict):
    """Code point -> how it is shown (itself, or its escape), for str.translate.
    Filled as code points are met and bounded, as names chosen to be hostile
    could otherwise grow it to every code point there is."""

    LIMIT = 4096

    def __missing__(self, n: int) -> str:
        if len(self) >= self.LIMIT:
            self.clear()
        c = chr(n)
        shown = self[n] = c if c.isprintable() else _escape(n)
        return shown


_shown = _Shown()


def for_terminal(text: str | bytes) -> str:
    """`text` with every character a terminal would act on, or could hide, escaped.

    Bytes are decoded as UTF-8 first, undecodable bytes shown as `\\xNN`. Text
    that is all printable (nearly all of it) costs one isprintable() pass."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8", "surrogateescape")
    if text.isprintable():
        return text
    return text.translate(_shown)


def is_safe(text: str) -> bool:
    """True when for_terminal would leave `text` unchanged."""
    return text.isprintable()


def decode_exact(raw: bytes) -> str:
    """Bytes from the kernel as text that keeps every byte: UTF-8 where it is,
    surrogate escapes where it is not (encode with "surrogateescape" to get the
    bytes back). for_terminal shows those as `\\xNN`."""
    return raw.decode("utf-8", "surrogateescape")


def write_line(stream: TextIO, text: str) -> None:
    """Write one already-escaped line; a stream that cannot encode a character
    (PYTHONIOENCODING=ascii, a Latin-1 terminal) gets it as a backslash escape
    rather than raising."""
    try:
        stream.write(text + "\n")
    except UnicodeEncodeError:
        enc = getattr(stream, "encoding", None) or sys.getdefaultencoding()
        stream.write(text.encode(enc, "backslashreplace").decode(enc) + "\n")

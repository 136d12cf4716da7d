"""Output safe for root's terminal: the one escaping function (safetext.for_terminal),
exact text from kernel bytes (decode_exact), and the sinks and renderers that use
them. No kernel needed: hostile names are built here, byte by byte."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from bpfprobes.backends.tracefs import tracepipe
from bpfprobes.base.safetext import decode_exact, for_terminal, is_safe, write_line
from bpfprobes.present import decode
from bpfprobes.present.output import Column, JsonOutput, TextOutput

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# what a terminal acts on or hides: never shown raw
FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def raw_controls(data: bytes) -> list[int]:
    """Bytes a terminal would act on in UTF-8 output: C0 (but the line ends), DEL,
    and C1 as UTF-8 (C2 80..C2 9F) or bare."""
    text = data.decode("utf-8", "surrogateescape")
    return [ord(c) for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
            or 0xDC80 <= ord(c) <= 0xDCFF]


# ---------------------------------------------------------------- the function

@pytest.mark.parametrize("n", range(0x20))
def test_every_c0_control_is_escaped(n):
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    want = named.get(n, "\\x%02x" % n)
    assert for_terminal(f"a{chr(n)}b") == f"a{want}b"


def test_del_and_every_c1_control():
    assert for_terminal("\x7f") == "\\x7f"
    for n in range(0x80, 0xA0):
        # the character U+0080..U+009F (UTF-8 C2 xx), told apart from a stray byte
        assert for_terminal(chr(n)) == f"\\u{n:04x}"
        assert for_terminal(bytes([n])) == f"\\x{n:02x}"


@pytest.mark.parametrize("char", [
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",      # embeddings, overrides, pop
    "\u2066", "\u2067", "\u2068", "\u2069",                # isolates
    "\u200e", "\u200f", "\u061c",                          # LRM, RLM, ALM
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",      # zero-width, BOM
    "\u00ad", "\u180e", "\u2028", "\u2029",                # soft hyphen, separators
    "\u00a0", "\u3000",                                    # spaces other than ASCII's
    "\U000e0001", "\U000e0041",                            # tags
    "\ue000", "\U000f0000",                                # private use
])
def test_format_and_separator_characters_are_escaped(char):
    n = ord(char)
    want = f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
    assert for_terminal(f"x{char}y") == f"x{want}y"


def test_the_escape_sequences_of_the_issue():
    assert for_terminal("\033]0;pwned\007") == "\\x1b]0;pwned\\x07"
    assert for_terminal("\033[2J") == "\\x1b[2J"
    assert for_terminal("evil\u202etxt.exe") == "evil\\u202etxt.exe"


def test_bytes_that_are_not_utf8_show_as_the_byte():
    assert for_terminal(b"a\xffb") == "a\\xffb"
    assert for_terminal(b"\xe2\x82") == "\\xe2\\x82"          # a cut UTF-8 character
    assert for_terminal(b"\xed\xa0\x80") == "\\xed\\xa0\\x80"  # an encoded surrogate
    assert for_terminal(decode_exact(b"x\x80\xfe")) == "x\\x80\\xfe"
    for n in range(0x80, 0x100):
        assert for_terminal(decode_exact(bytes([n]))) == f"\\x{n:02x}"


@pytest.mark.parametrize("text", [
    "/etc/hostname", "plain ASCII ~!@#$%^&*()_+{}|:<>?`-=[]\\;',./\"", "",
    "café é ü", "日本語のファイル", "Ελληνικά", "русский", "العربية", "עברית", "😀🚀",
    "e\u0301", "한국어",
])
def test_printable_text_is_untouched(text):
    assert for_terminal(text) is text            # the fast path returns it as it is
    assert for_terminal(text.encode()) == text
    assert is_safe(text)


def test_no_code_point_comes_out_raw_if_a_terminal_could_act_on_it():
    # the planes that hold assigned characters, and edges of the others
    planes = (*range(0x20000), *range(0xE0000, 0xE1000), *range(0xF0000, 0xF0100),
              *range(0x10FF00, 0x110000))
    everything = "".join(map(chr, planes))
    shown = for_terminal(everything)
    bad = {c for c in set(shown) if unicodedata.category(c) in FORBIDDEN_CATEGORIES}
    assert not bad
    assert shown.isprintable()


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=64))
def test_any_bytes_come_out_printable_and_idempotent(raw):
    shown = for_terminal(raw)
    assert shown.isprintable() and for_terminal(shown) == shown
    assert not raw_controls(shown.encode())


@settings(max_examples=300, derandomize=True)
@given(st.text(max_size=64))
def test_any_text_comes_out_printable_and_printable_text_stays(text):
    shown = for_terminal(text)
    assert shown.isprintable() and for_terminal(shown) == shown
    if text.isprintable():
        assert shown == text


def test_the_memo_of_code_points_stays_bounded():
    from bpfprobes.base import safetext
    for_terminal("".join(map(chr, range(0xE000, 0xE000 + 3 * safetext._Shown.LIMIT))))
    assert len(safetext._shown) <= safetext._Shown.LIMIT


# ---------------------------------------------------------------- exact text

def test_decode_exact_keeps_every_byte():
    for raw in (b"a\xffb", b"a\\xffb", b"\033]0;x\007", "é".encode(), b"\xc3", bytes(range(1, 256))):
        assert decode_exact(raw).encode("utf-8", "surrogateescape") == raw


def test_a_byte_and_its_spelling_stay_apart():
    # the bug of errors="backslashreplace": both were the text a\xffb
    assert decode.cstr(b"a\xffb\0junk") != decode.cstr(b"a\\xffb\0")
    assert decode.cstr(b"a\xffb\0junk").encode("utf-8", "surrogateescape") == b"a\xffb"


HOSTILE = b"/tmp/\033]0;pwned\007 \033[2J\r\n\x9b\xff\xfe" + "\u202etxt".encode() + b" \xc3\xa9"


def open_sample(path: bytes, comm: bytes) -> bytes:
    head = struct.pack(decode.OPEN_EVENT.head.format, 1, 42, 42, 0, 3, 0, 0, 1, 0, len(path),
                       comm)
    return head + path


def test_open_event_is_exact_and_json_gives_the_bytes_back():
    comm = b"\033[31mred\xff\0"
    e = decode.open_event(open_sample(HOSTILE, comm))
    assert e["path"].encode("utf-8", "surrogateescape") == HOSTILE
    out = io.StringIO()
    JsonOutput("t", out).event({"path": e["path"], "comm": e["comm"]})
    line = out.getvalue()
    assert line.isascii() and line.count("\n") == 1 and not raw_controls(line.encode())
    back = json.loads(line)
    assert back["path"].encode("utf-8", "surrogateescape") == HOSTILE
    assert back["comm"].encode("utf-8", "surrogateescape") == b"\033[31mred\xff"


def test_json_lines_write_on_an_ascii_stream():
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="ascii", errors="strict")
    JsonOutput("t", out).event({"path": decode_exact(HOSTILE), "name": "日本"})
    out.flush()
    assert json.loads(buf.getvalue())["name"] == "日本"


# ---------------------------------------------------------------- text sinks

def columns() -> list[Column]:
    return [Column("PID", 7, lambda e: e["pid"], escape=False), Column("COMM", -16,
            lambda e: e["comm"]), Column("PATH", 0, lambda e: e["path"])]


@pytest.mark.parametrize("comm, path", [
    ("cat", "/etc/hostname"), ("\033[2Jx", decode_exact(HOSTILE)), ("é", "/tmp/日本"),
    ("a\nb", "\u202e"), ("", "")])
def test_columns_escape_text_cells_as_for_terminal_does(comm, path):
    out = io.StringIO()
    TextOutput("t", columns(), out=out).event({"pid": 7, "comm": comm, "path": path})
    assert out.getvalue() == f"{7:>7} {for_terminal(comm):<16} {for_terminal(path)}\n"
    assert not raw_controls(out.getvalue().encode())


def test_columns_on_an_ascii_stream_escape_letters_instead_of_raising():
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="ascii", errors="strict")
    TextOutput("t", columns(), out=out).event({"pid": 1, "comm": "é", "path": "/tmp/\x1b日"})
    out.flush()
    # padded as text (one character), then the letter escaped by the stream
    assert buf.getvalue() == b"      1 \\xe9" + b" " * 15 + b" /tmp/\\x1b\\u65e5\n"


def test_tables_and_summaries_are_escaped():
    out, err = io.StringIO(), io.StringIO()
    sink = TextOutput("t", columns(), out=out, err=err)
    sink.table("summary", [], "NAME\n\033]0;x\007 1")
    sink.summary({"events": 1, "lost": 0, "reason": "duration", "elapsed": 1.0,
                  "note": "\033[2J"})
    assert out.getvalue() == "NAME\n\\x1b]0;x\\x07 1\n"
    assert "\\x1b[2J" in err.getvalue() and "\033" not in err.getvalue()


def test_write_line_escapes_what_the_stream_cannot_encode():
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="latin-1")
    write_line(out, "é 日")
    out.flush()
    assert buf.getvalue() == b"\xe9 \\u65e5\n"


def test_execsnoop_args_escaped_plain_and_quoted():
    from bpfprobes.tools.execsnoop import _render_args
    e = {"argv": ["/bin/x", "\033]0;t\007", decode_exact(b"\xff"), "a\\b \"q\"", "\u202e"],
         "cut": [], "flags": 0}
    assert _render_args(False)(e) == '/bin/x \\x1b]0;t\\x07 \\xff a\\b "q" \\u202e'
    # quoted: a literal backslash doubled, an escape's single: never the same text
    assert _render_args(True)(e) == \
        '"/bin/x" "\\x1b]0;t\\x07" "\\xff" "a\\\\b \\"q\\"" "\\u202e"'


def test_count_and_doctor_tables_escape_names():
    from bpfprobes.tools import count, doctor
    table = count.text_table([{"target": "main\033[2J", "pid": 5, "comm": "\u202eevil",
                               "count": 3, "rate": 1.5}], count.labels_of(["x"], "pid,comm"))
    assert "main\\x1b[2J" in table and "\\u202eevil" in table
    assert not raw_controls(table.encode().replace(b"\n", b""))
    report = {"kernel": {"release": "6.1\033]0;x\007", "arch": "x86_64"},
              "features": {"uprobes": True}, "evidence": {"uprobes": "/tmp/\033[2J\udcff"},
              "headers": {"status": "none", "path": None, "source": "\x9b", "release": None},
              "tracefs": "/sys/kernel/tracing", "tools": {"probe": "uprobes"},
              "privileges": {"root": True, "euid": 0, "cap_sys_admin": True,
                             "cap_perfmon": True, "cap_bpf": True},
              "verified": {"release": "6.1\033[2J", "arch": "x86_64", "whole": True,
                           "passed": 1, "tests": 1, "date": "\x9b"},
              "verified_on": ["6.1 x86_64\033[2J"]}
    text = doctor.table(report)
    assert "6.1\\x1b]0;x\\x07" in text and "/tmp/\\x1b[2J\\xff" in text
    assert "6.1\\x1b[2J (x86_64)" in text
    report["verified"] = None
    assert "(6.1 x86_64\\x1b[2J)" in doctor.table(report)
    assert not raw_controls(text.encode())


# ---------------------------------------------------------------- trace_pipe

def test_trace_pipe_bytes_split_inside_a_character_are_exact():
    """The tracefs backend reads trace_pipe in chunks: a chunk may end inside a
    UTF-8 character, and strings hold whatever bytes the program had."""
    from bpfprobes.backends.tracefs.backend import TracePipe
    line = (b"  pt\033[2J-21176   (  21170) [001] d..1. 14920.672168: three: "
            b"(0x5596edc271e3) a=-7 s=\"caf\xc3\xa9 \xff\033]0;x\007\"\n")
    cut = line.index(b"\xa9")
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = []
    try:
        pipe = TracePipe(r, None, {"three": ["a", "s"]})
        pipe.open(got.append)
        os.write(w, line[:cut])
        pipe.drain()
        os.write(w, line[cut:])
        pipe.finish()
    finally:
        os.close(r)
        os.close(w)
    [ln] = got
    assert isinstance(ln, tracepipe.Line) and ln.comm.encode() == b"pt\033[2J"
    assert ln.values["s"].encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff\033]0;x\007"
    assert not raw_controls(for_terminal(ln.raw).encode())


# ---------------------------------------------------------------- error messages

def test_error_messages_escape_argv_bytes_that_are_not_utf8():
    """A non-UTF-8 byte and an ESC in argv, echoed in `TOOL: error:`: one escaped
    line, exit 2, no UnicodeEncodeError (no root needed: argv is checked first)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, "-m", "bpfprobes.cli.main", "opensnoop", "-p",
                        b"1\xff\033]0;pwned\007"], capture_output=True, env=env, timeout=60)
    assert p.returncode == 2, p.stderr
    first = p.stderr.splitlines()[0]
    assert first.startswith(b"opensnoop: error: ") and b"Traceback" not in p.stderr
    assert b"\\xff\\x1b]0;pwned\\x07" in first
    assert not raw_controls(p.stderr)

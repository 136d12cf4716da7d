"""The storm path of `bpfprobes probe`: a raw sample -> its ftrace line or JSON
event in one pass, with no header dict, no Event and no call per field.

probefmt.Decoder and its renderers are the definition (every case: faults,
truncated strings, stacks, --context, a userspace filter); this path covers
the common sample of a probe that needs none of those and hands every other
sample to them, and a property test holds both to the same bytes. What it
saves is Python calls (~70 an event through Decoder, ~15 here), which is what
an event costs on CPython.

Per probe, worked out once: one struct.Struct that reads every scalar at its
slot already typed (width and sign by the struct code, as probelayout.typed
does), the string slots' spans, and a %-template of the line. The template is
data for the % operator only: a name or symbol in it has its `%` doubled, so
nothing of the traced system or the user's spec is ever read as a directive.
"""
from __future__ import annotations

import struct
from json.encoder import encode_basestring_ascii as enc
from operator import itemgetter
from typing import Callable

from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel import errnos
from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.plan.probelayout import SCALAR_SIZE, Slot
from bpfprobes.plan.probeplan import Plan, Probe
from bpfprobes.present import probefmt
from bpfprobes.present.decode import PROBE_EVENT, Texts, cstr
from bpfprobes.present.output import dumps

HEADER = PROBE_EVENT.head.size
# a scalar slot read as its type: the low bytes of the 8-byte slot (little-endian)
_CODES = {("u", 8): "B7x", ("u", 16): "H6x", ("u", 32): "I4x", ("u", 64): "Q",
          ("s", 8): "b7x", ("s", 16): "h6x", ("s", 32): "i4x", ("s", 64): "q",
          ("x", 8): "B7x", ("x", 16): "H6x", ("x", 32): "I4x", ("x", 64): "Q",
          ("symbol", 0): "Q"}
assert all(struct.calcsize("<" + c) == SCALAR_SIZE for c in _CODES.values())
assert PROBE_EVENT.names == ("ts_ns", "latency_ns", "ret_ip", "faults", "truncated", "pid",
                             "tid", "probe", "ctx.cpu", "ctx.preempt", "ctx.source",
                             "ctx.implied", "ctx.reserved", "kstack", "ustack", "comm")
_CALLERS_KEPT = 8192            # kernel return addresses named, remembered


def _pct(text: str) -> str:
    """Text as a literal part of a %-template."""
    return text.replace("%", "%%")


def _errno_text(value: int) -> str:
    name = errnos.name(value)
    return f"{value} ({name})" if name else str(value)


def _sign(bits: int) -> Callable[[int], int]:
    """An xN return value as the signed number its errno is named from."""
    top, span = 1 << (bits - 1), 1 << bits
    return lambda v: v - span if v & top else v


def _reader(unpack: Callable, spans: tuple, order: Callable | None) -> Callable:
    """`(raw, strings) -> the arguments in order`: typed scalars, then each string
    (to its NUL) through `strings`. Made once per probe, for its shape: one string
    (the usual last argument) read without a loop."""
    def cut(raw: bytes, a: int, b: int) -> bytes:
        end = raw.find(b"\0", a, b)
        return raw[a:end] if end >= 0 else raw[a:b]

    if not spans:
        def read(raw: bytes, strings: dict) -> tuple:
            return unpack(raw, HEADER)
    elif len(spans) == 1:
        (a, b), = spans

        def read(raw: bytes, strings: dict) -> tuple:
            end = raw.find(b"\0", a, b)
            return unpack(raw, HEADER) + (strings[raw[a:end] if end >= 0 else raw[a:b]],)
    else:
        def read(raw: bytes, strings: dict) -> tuple:
            return unpack(raw, HEADER) + tuple([strings[cut(raw, a, b)] for a, b in spans])
    if order is None:
        return read
    return lambda raw, strings: order(read(raw, strings))


class _Probe:
    """One probe's plan for the storm path, worked out when the run starts."""

    def __init__(self, probe: Probe, kallsyms: Kallsyms) -> None:
        slots = probe.layout.slots
        scalars = [s for s in slots if not s.is_string]
        strings = [s for s in slots if s.is_string]
        self.scalars = struct.Struct("<" + "".join(_CODES[s.type.kind, s.type.bits]
                                                    for s in scalars))
        self.need = HEADER + len(scalars) * SCALAR_SIZE
        spans = tuple((HEADER + s.offset, HEADER + s.offset + s.size) for s in strings)
        # (scalars..., strings...) -> in argument order (None: already in it)
        where = {id(s): i for i, s in enumerate([*scalars, *strings])}
        picks = [where[id(s)] for s in slots]
        order = None if picks == sorted(picks) else itemgetter(*picks)
        self.values = _reader(self.scalars.unpack_from, spans, order)
        self.names = tuple(s.name for s in slots)
        self.is_return = probe.spec.is_return
        self.uprobe = probe.spec.is_uprobe
        self.paired = probe.pair is not None
        self.where = None if probe.spec.kind == "tracepoint" else probe.where
        self.event = probe.event
        # text: what each argument becomes (None: as the template formats it)
        self.text_of: tuple = tuple(self._text_of(probe, s, kallsyms) for s in slots)
        self.converted = any(f is not None for f in self.text_of)
        self.template = " ".join(f"{_pct(s.name)}={self._directive(s)}" for s in slots)
        # JSON: the line up to the arguments' end, a template of their values
        self.json_of: tuple = tuple((lambda v: enc(kallsyms.format(v)))
                                    if s.type.kind == "symbol" else None for s in slots)
        self.symbols = any(f is not None for f in self.json_of)
        args = ",".join(_pct(enc(s.name)) + (":%s" if s.is_string or s.type.kind == "symbol"
                                             else ":%d") for s in slots)
        self.json_head = ('{"type":"event","probe":' + _pct(enc(probe.event)) +
                          ',"pid":%d,"tid":%d,"comm":%s,"cpu":%d,"ts":%r,"ts_ns":%d,"args":{' +
                          args + "}")
        self.json_where = ',"where":' + enc(self.where) if self.where is not None else ""
        # JSON names the errno of an sN return value, and of an xN one (an ERR_PTR)
        self.errno_slots = tuple(
            (i, enc(s.name), _sign(s.type.bits) if s.type.kind == "x" else None)
            for i, s in enumerate(slots)
            if probefmt.is_return_value(probe, s) and
            (s.type.kind == "s" or (s.type.kind == "x" and s.type.bits >= 32)))
        self.no_minus_one = probe.spec.is_uprobe        # probefmt.errno_of's exception

    @staticmethod
    def _directive(s: Slot) -> str:
        if s.is_string:
            return '"%s"'
        if s.type.kind == "x":
            return "0x%x"
        return "%s"

    @staticmethod
    def _text_of(probe: Probe, s: Slot, kallsyms: Kallsyms) -> Callable | None:
        if s.type.kind == "symbol":
            return kallsyms.format
        if s.type.kind == "s" and probefmt.is_return_value(probe, s):
            if probe.spec.is_uprobe:        # -1 is not named there (probefmt.errno_of)
                return lambda v: str(v) if v == -1 else _errno_text(v)
            return _errno_text
        return None


class Rows:
    """Raw samples -> ftrace lines (`text`) or JSON events (`json`); samples the
    storm path does not cover go through `decoder` and probefmt's renderers.
    `note(index, latency_ns | None)`: --summary's counts, per shown event."""

    def __init__(self, plan: Plan, decoder: probefmt.Decoder, kallsyms: Kallsyms,
                 ucaller: Callable[[int, int], str], wall: Callable[[int], float],
                 note: Callable[[int, int | None], None] | None = None) -> None:
        self.decoder = decoder
        self.kallsyms = kallsyms
        self.ucaller = ucaller
        self.wall = wall
        self.note = note
        self.texts = Texts()
        self.quoted = Texts(lambda raw: probefmt.quote(cstr(raw)))    # as lines show them
        self.encoded = Texts(lambda raw: enc(cstr(raw)))              # JSON strings
        self.callers: dict[int, str | None] = {}
        # stacks and --context are read per sample: those runs take the decoder's way;
        # so does a probe with a userspace filter
        whole = not (plan.options.kstack or plan.options.ustack or decoder.context is not None)
        self.probes = tuple(_Probe(p, kallsyms) if whole and p.user_filter is None else None
                            for p in plan.probes)

    # ------------------------------------------------------------------ shared

    def _kernel_caller(self, ip: int) -> str | None:
        try:
            return self.callers[ip]
        except KeyError:
            pass
        if len(self.callers) >= _CALLERS_KEPT:
            self.callers.clear()
        name = self.kallsyms.format(ip)
        name = self.callers[ip] = None if any(t in name for t in probefmt.TRAMPOLINES) \
            else name
        return name

    def _caller(self, p: _Probe, ip: int, pid: int) -> str | None:
        if not ip:
            return None
        return self.ucaller(ip, pid) if p.uprobe else self._kernel_caller(ip)

    def _slow(self, raw: bytes):
        ev = self.decoder(raw)
        if ev is not None and self.note is not None:
            self.note(ev.probe.index, ev.latency_ns)
        return ev

    # ------------------------------------------------------------------ text

    def text(self, raw: bytes) -> str | None:
        """One sample's ftrace line (stack lines after it), escaped; None: filtered out."""
        (ts, latency, ret_ip, faults, truncated, pid, tid, index, cpu, _preempt, _source,
         _implied, _reserved, _kstack, _ustack, comm) = PROBE_EVENT.head.unpack_from(raw)
        p = self.probes[index] if index < len(self.probes) else None
        if p is None or faults or truncated or len(raw) < p.need:
            ev = self._slow(raw)
            return None if ev is None else probefmt.ftrace_text(ev)
        values = p.values(raw, self.quoted)
        if p.converted:
            values = tuple(v if f is None else f(v) for f, v in zip(p.text_of, values))
        body = p.template % values
        if p.paired and latency:
            body = f"{body} latency_ns={latency}" if body else f"latency_ns={latency}"
        if p.is_return:
            caller = self._caller(p, ret_ip, pid)
            body = f"({caller} <- {p.where}) {body}" if caller else f"(<- {p.where}) {body}"
        elif p.where is not None:
            body = f"({p.where}) {body}"
        if self.note is not None:
            self.note(index, latency if p.paired and latency else None)
        line = ("%16s-%-7d [%03d] %12.6f: %s: %s" % (self.texts[comm], tid, cpu, ts / 1e9,
                                                     p.event, body)).rstrip()
        return line if line.isprintable() else for_terminal(line)

    # ------------------------------------------------------------------ JSON

    def json(self, raw: bytes) -> str | None:
        """One sample's JSON event line, encoded: probefmt.json_event's, as
        output.dumps writes it (json's own string encoder, the keys in its order);
        None: filtered out."""
        (ts, latency, ret_ip, faults, truncated, pid, tid, index, cpu, _preempt, _source,
         _implied, _reserved, _kstack, _ustack, comm) = PROBE_EVENT.head.unpack_from(raw)
        p = self.probes[index] if index < len(self.probes) else None
        if p is None or faults or truncated or len(raw) < p.need:
            ev = self._slow(raw)
            return None if ev is None else \
                dumps({"type": "event", **probefmt.json_event(ev, self.wall)})
        values = p.values(raw, self.encoded)
        shown = tuple(v if f is None else f(v) for f, v in zip(p.json_of, values)) \
            if p.symbols else values
        line = p.json_head % (pid, tid, self.encoded[comm], cpu, self.wall(ts), ts, *shown)
        caller = self._caller(p, ret_ip, pid)
        if p.is_return:
            line += ',"where":' + enc(f"{caller} <- {p.where}" if caller else f"<- {p.where}")
        elif p.where is not None:
            line += p.json_where
        if caller:
            line += ',"caller":' + enc(caller)
        lat = latency if p.paired and latency else None
        if p.paired:
            line += f',"latency_ns":{lat}' if lat else ',"latency_ns":null'
        if p.errno_slots:
            names = []
            for i, name, signed in p.errno_slots:
                v = values[i] if signed is None else signed(values[i])
                if not (v == -1 and p.no_minus_one) and (e := errnos.name(v)):
                    names.append(f"{name}:{enc(e)}")
            if names:
                line += ',"errno":{' + ",".join(names) + "}"
        if self.note is not None:
            self.note(index, lat)
        return line + "}"

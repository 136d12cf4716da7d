"""serve: a long-running session of metric parts (a session file), the kernel's
counts and latency histograms at /metrics for Prometheus.

The parts are one backend to the session core (Parts): loaded and attached
part by part, each with its own teardown, read into a snapshot that the
metrics server hands out. SIGHUP re-reads the file: new and changed parts are
attached before gone ones are detached, unchanged parts are left alone (their
counters stay monotonic); a file that no longer parses is one log line and the
running set stays. SIGTERM/SIGINT end the run through the session core's
teardown, as for every tool.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

from bpfprobes import __version__
from bpfprobes.backends.bpf import tables
from bpfprobes.base import signals
from bpfprobes.base.errors import BpfprobesError, UsageError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel.running import Kernel, current
from bpfprobes.plan import sessionfile
from bpfprobes.present import exporter, metricrows
from bpfprobes.present.output import TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Live, Session
from bpfprobes.tools import shared
from bpfprobes.tools.metricparts import Part, check_budget, plan_part

PROG = "bpfprobes serve"
PUBLISH_S = 1.0                 # the snapshot a scrape gets is at most this old


@dataclass(frozen=True)
class Options:
    file: str = ""
    listen: tuple[str, int] | None = None       # overrides the file's listen
    duration: float | None = None
    verbose: bool = False


class PartsTables(tables.NoStream):
    """The session's transport: nothing streams; loss is every live part's."""

    def __init__(self, parts: "Parts") -> None:
        self.parts = parts

    def finish(self) -> None:
        self.parts.publish()            # the last figures, while still attached

    def _sum(self, key: str) -> int:
        return sum(p.health().get(key, 0) for p in self.parts.all) + \
            self.parts.retired.get(key, 0)

    @property
    def lost(self) -> int:
        return self._sum("lost")

    @property
    def throttled(self) -> int:
        return self._sum("throttled")

    @property
    def recursion_misses(self) -> int:
        return sum(p.reader.recursion_misses for p in self.parts.all
                   if p.up and p.reader is not None)


class Parts:
    """The session's backend: every part of the file, each its own program."""

    def __init__(self, k: Kernel, planned: list[Part], metrics: exporter.Exporter,
                 prog: str) -> None:
        self.k = k
        self.all = planned
        self.metrics = metrics
        self.prog = prog
        self.published = 0.0
        self.retired = {"lost": 0, "throttled": 0}      # of parts a reload removed

    def log(self, line: str) -> None:
        """One line on stderr (the journal, under systemd), escaped: it names user text."""
        print(f"{self.prog}: {for_terminal(line)}", file=sys.stderr, flush=True)

    def load(self, teardown: contextlib.ExitStack, stop: signals.StopSignals) -> None:
        teardown.callback(self.close)           # whatever is attached when the run ends

    def transport(self) -> PartsTables:
        return PartsTables(self)

    def attach(self, stop: signals.StopSignals) -> None:
        for part in self.all:
            stop.check("attaching")
            self.start(part, stop)
        self.publish()          # a scrape from the "serving" line on sees every part

    def start(self, part: Part, stop: signals.StopSignals) -> None:
        part.start(stop)
        self.log(f"part {part.name}: {'up' if part.up else 'down'} ({part.reason})")

    def live(self) -> tuple[list[str], str | None, dict]:
        return ([f"{p.name}: {a.describe()}" for p in self.all if p.up
                 for a in p.backend.loaded.attached], "compiled",
                {"parts": {p.name: {"kind": p.decl.kind, "up": p.up, "why": p.reason}
                           for p in self.all}})

    def notes(self) -> list[str]:
        return []

    def while_attached(self) -> dict:
        return {}

    def publish(self) -> None:
        families = []
        for part in self.all:
            try:
                families += part.snapshot()
            except (OSError, BpfprobesError) as e:      # its maps went away: say, go on
                self.log(f"part {part.name}: cannot read its tables: {e}")
        families += metricrows.health((p.name, p.health()) for p in self.all)
        self.metrics.publish(families)
        self.published = time.monotonic()

    def replace(self, wanted: list[Part], stop: signals.StopSignals) -> None:
        """A reload: new and changed parts attached first, then gone ones detached."""
        old = {p.name: p for p in self.all}
        # a part that is down is tried again: the kernel may have what it lacked
        keep = [old[p.name] for p in wanted
                if p.name in old and old[p.name].decl == p.decl and old[p.name].up]
        kept = {p.name for p in keep}
        fresh = [p for p in wanted if p.name not in kept]
        gone = [p for p in self.all if p.name not in kept]
        # all of them ours until the swap: a stop signal while a fresh part compiles
        # leaves through the session's teardown, which closes self.all
        self.all = keep + gone + fresh
        try:
            for part in fresh:
                self.start(part, stop)
        except signals.Stopped:
            self.log("stopped during a reload: every part is detached now")
            return                      # the loop sees the signal: summary, teardown
        # a changed part whose new definition cannot run: the running one stays
        running = {p.name: p for p in gone if p.up}
        for part in [p for p in fresh if not p.up and p.name in running]:
            self.log(f"part {part.name}: its new definition is down; the running one stays")
            fresh.remove(part)
            gone.remove(running[part.name])
            keep.append(running[part.name])
        for part in gone:
            figures = part.health()
            part.close()
            for key in self.retired:
                self.retired[key] += figures.get(key, 0)
        order = {p.name: i for i, p in enumerate(wanted)}
        self.all = sorted(keep + fresh, key=lambda p: order[p.name])
        self.log(f"reloaded: {len(fresh)} attached, {len(gone)} detached, {len(keep)} unchanged")

    def close(self) -> None:
        for part in self.all:
            part.close()


class _Log(TextOutput):
    """serve's output: log lines on stderr (no events)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, [], out=sys.stderr, header=False)

    def meta(self, meta: dict) -> None:
        up = [n for n, p in meta["parts"].items() if p["up"]]
        self.err.write(f"{self.tool}: serving {meta['metrics']}: {len(up)} of "
                       f"{len(meta['parts'])} parts up\n")
        self.err.flush()

    def summary(self, s: dict) -> None:
        self.err.write(f"{self.tool}: {s['lost']} lost, {s['elapsed']:.1f} s, "
                       f"stopped by {s['reason']}\n")
        self.err.flush()


SESSION_BUDGET = 512 << 20      # kernel bytes all parts' tables may take together


def plan_all(k: Kernel, session: sessionfile.Session) -> list[Part]:
    """Every part planned; an error names the part (its file and line)."""
    out, total = [], 0
    for decl in session.parts:
        try:
            total += check_budget(decl)
            out.append(plan_part(k, decl))
        except BpfprobesError as e:
            e.what = f"{session.path}:{decl.line}: [[{decl.kind}]] {decl.name}: {e.what}"
            raise
    if total > SESSION_BUDGET:
        raise UsageError(f"{session.path}: the parts' tables would take {total >> 20} MiB of "
                         f"kernel memory (at most {SESSION_BUDGET >> 20} MiB a session)",
                         "lower max_series")
    return out


def serve(k: Kernel, planned: list[Part], listen: tuple[str, int], o: Options,
          prog: str = PROG, reread: Callable[[], list[Part]] | None = None) -> loop.Summary:
    """Run the parts until a stop, their figures at http://LISTEN/metrics; SIGHUP
    calls `reread` for the parts wanted now (None: SIGHUP stops, as for any tool)."""
    stop = signals.stop_signals()
    # bound before anything is attached: a port in use is one line, nothing attached
    with exporter.Exporter(*listen, flag="--listen" if reread else "--prometheus") as metrics:
        parts = Parts(k, planned, metrics, prog)
        parts.publish()             # from the first scrape: every part, up 0 until attached
        state = {"reloads": 0}      # a SIGHUP during set-up is a reload at the first tick

        def tick() -> None:
            if stop.reloads != state["reloads"]:
                state["reloads"] = stop.reloads
                reload()
            if time.monotonic() - parts.published >= PUBLISH_S:
                parts.publish()

        def reload() -> None:
            try:
                wanted = reread()
            except BpfprobesError as e:
                parts.log(f"reload refused, still running the last good file: {e.what}")
                return
            except Exception as e:      # noqa: BLE001 - whatever the file does, we keep serving
                parts.log(f"reload refused, still running the last good file: "
                          f"{type(e).__name__}: {e}")
                return
            parts.replace(wanted, stop)
            parts.publish()

        def meta(live: Live) -> dict:
            return {"version": __version__, "kernel": k.release, "file": o.file or None,
                    "metrics": f"http://{metrics.address}/metrics",
                    "parts": live.details["parts"], "startup_s": live.startup_s}

        return Session(prog, k, parts, _Log(prog), lambda _b: lambda _raw: False,
                       loop.Limits(o.duration, None), meta, verbose=o.verbose,
                       on_tick=tick).run()


def run(o: Options) -> int:
    shared.require_root()
    signals.stop_signals().reload_on(signal.SIGHUP)
    session = sessionfile.load(o.file)
    k = current()
    listen = o.listen or session.listen

    def reread() -> list[Part]:
        again = sessionfile.load(o.file)
        if not o.listen and again.listen != listen:
            print(f"{PROG}: listen changed in the file: a restart applies it", file=sys.stderr)
        return plan_all(k, again)

    serve(k, plan_all(k, session), listen, o, reread=reread)
    return 0

"""`bpfprobes serve SESSION.toml` on this kernel, scraped by a real Prometheus
(Debian's package, started here on loopback with its own config and data
directory): workloads of known size show up through Prometheus's query API
exactly; a latency histogram counts every call; SIGHUP adds a part without a
reset of the others; a comm storm stays within max_series; bad files are one
line with nothing attached."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tooling import Tool, Workload, run_tool, unique

PROMETHEUS = shutil.which("prometheus")
OPENS = ["t:syscalls:sys_enter_openat", "t:syscalls:sys_enter_openat2"]


def address_of(t: Tool) -> str:
    """HOST:PORT the exporter serves on (its log line)."""
    line = next(line for line in t.err if ": serving http" in line)
    return line.split("serving http://", 1)[1].split("/metrics", 1)[0]


def scrape(address: str) -> dict:
    """{(name, frozenset(labels)): value} of every sample /metrics serves."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def serve(tmp_path: Path, text: str, name: str = "session.toml", *args: str) -> Tool:
    path = tmp_path / name
    path.write_text(text)
    return Tool("serve", "--listen", "127.0.0.1:0", *args, str(path))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A real Prometheus scraping `targets` every second, on loopback, in tmp_path."""

    def __init__(self, tmp_path: Path, targets: list[str]) -> None:
        if PROMETHEUS is None:
            pytest.fail("prometheus is not installed: `make setup-test` installs Debian's")
        self.dir = tmp_path / "prometheus"
        self.dir.mkdir()
        config = self.dir / "prometheus.yml"
        config.write_text(json.dumps({      # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "bpfprobes", "scrape_interval": "1s",
                                "static_configs": [{"targets": targets}]}]}))
        self.address = f"127.0.0.1:{free_port()}"
        self.log = open(self.dir / "log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address={self.address}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.targets = targets
        ok = self.until(lambda: len([v for v in self.vector("up") if v[1] == 1]) == len(targets))
        assert ok, f"Prometheus never saw {targets} up: {(self.dir / 'log').read_text()[-2000:]}"

    def query(self, expr: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(f"http://{self.address}/api/v1/query?{q}",
                                        timeout=10) as r:
                body = json.load(r)
        except OSError:
            return []               # not listening yet
        assert body["status"] == "success", body
        return body["data"]["result"]

    def vector(self, expr: str) -> list[tuple[dict, float]]:
        return [(r["metric"], float(r["value"][1])) for r in self.query(expr)]

    def until(self, ready, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if ready():
                return True
            time.sleep(0.25)
        return bool(ready())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


COUNT_PART = """
[[count]]
name = "opens"
targets = {targets}
by = ["comm"]
"""


def test_prometheus_sees_each_exporters_counts_exactly(tmp_path):
    """Two exporters, scraped by a real Prometheus; two workloads of 1,000 opens each,
    under their own comms: each comm is 1,000 on each instance, 2,000 summed."""
    n = 1000
    text = COUNT_PART.format(targets=json.dumps(OPENS))
    comms = [unique("srv")[:15], unique("srv")[:15]]
    work = [Workload(c, f"storm:{tmp_path / c}:{n}") for c in comms]
    with serve(tmp_path, text, "a.toml") as a, serve(tmp_path, text, "b.toml") as b:
        targets = [address_of(a), address_of(b)]
        prom = Prometheus(tmp_path, targets)
        try:
            for w in work:
                assert w.go() == [n]
            for comm in comms:
                expr = f'bpfprobes_opens_total{{comm="{comm}"}}'
                assert prom.until(lambda: sorted(v for _, v in prom.vector(expr)) == [n, n]), \
                    prom.vector(expr)
                per = {m["instance"]: v for m, v in prom.vector(expr)}
                assert per == {targets[0]: n, targets[1]: n}
                assert prom.vector(f"sum without(instance) ({expr})")[0][1] == 2 * n
            lost = prom.vector("bpfprobes_lost_events_total")
            assert {m["instance"] for m, _ in lost} == set(targets)
            assert all(v == 0 for _, v in lost)
            assert all(v == 1 for _, v in prom.vector('bpfprobes_part_up{part="opens"}'))
        finally:
            prom.stop()
    assert a.proc.returncode == b.proc.returncode == 0
    assert not a.held().progs        # detached: the process is gone, nothing of it stays


@pytest.fixture
def target(target_bin) -> Path:
    return Path(target_bin)           # conftest's probe_target, built once a session


def run_target(exe: Path, iterations: int, nap_us: int) -> None:
    proc = subprocess.run([str(exe), unique("t"), str(iterations), str(nap_us), "/nonexistent"],
                          input="go\n", text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_latency_histogram_counts_every_call(tmp_path, target):
    """nap(2000 us) called 200 times: the histogram's _count is 200, its quantiles are
    finite, in order, and not below the nap's bucket; a failing call's errno is a label."""
    calls, nap_us = 200, 2000
    text = f"""
[[probe]]
name = "nap"
specs = ["p:{target}:nap", "r:{target}:nap", "r:{target}:fails_int ret=$retval:s32"]
latency = true
by = ["errno"]
"""
    with serve(tmp_path, text) as t:
        address = address_of(t)
        prom = Prometheus(tmp_path, [address])
        try:
            run_target(target, calls, nap_us)
            count = 'bpfprobes_nap_latency_seconds_count{probe="nap__return"}'
            assert prom.until(lambda: [v for _, v in prom.vector(count)] == [calls]), \
                prom.vector(count)
            q = {p: prom.vector(f"histogram_quantile({p}, sum by (le) "
                                f"(bpfprobes_nap_latency_seconds_bucket{{probe=\"nap__return\"}}))")
                 [0][1] for p in (0.5, 0.99)}
            # Prometheus interpolates inside a bucket: no estimate is below the bound
            # of the log2 bucket that holds the nap itself
            floor = (1 << (nap_us * 1000).bit_length() - 1) / 1e9
            assert floor <= q[0.5] <= q[0.99] < float("inf"), q
            # every call is in a bucket: the +Inf bucket and _count agree, _sum is their time
            inf = prom.vector('bpfprobes_nap_latency_seconds_bucket{probe="nap__return",le="+Inf"}')
            assert [v for _, v in inf] == [calls]
            total = prom.vector('bpfprobes_nap_latency_seconds_sum{probe="nap__return"}')[0][1]
            assert total >= calls * nap_us / 1e6
            # the errno label of a return value: fails_int() returns -13 (an int: typed s32)
            events = dict((m["probe"], (m.get("errno"), v)) for m, v in
                          prom.vector("bpfprobes_nap_events_total"))
            assert events["fails_int"] == ("EACCES", calls)
            assert events["nap"] == (None, calls)        # an entry has no return value
        finally:
            prom.stop()


def test_sighup_adds_a_part_and_keeps_counters_monotonic(tmp_path):
    comm = unique("hup")[:15]
    path = tmp_path / "session.toml"
    first = COUNT_PART.format(targets=json.dumps(OPENS))
    path.write_text(first)
    with Tool("serve", "--listen", "127.0.0.1:0", str(path)) as t:
        address = address_of(t)
        prom = Prometheus(tmp_path, [address])
        try:
            Workload(comm, f"storm:{tmp_path / 'x'}:300").go()
            expr = f'bpfprobes_opens_total{{comm="{comm}"}}'
            assert prom.until(lambda: [v for _, v in prom.vector(expr)] == [300])
            progs_before = t.held().progs
            path.write_text(first + '\n[[opensnoop]]\nby = ["comm", "errno"]\n')
            os.kill(t.proc.pid, signal.SIGHUP)
            assert t.wait_until(lambda: any("reloaded: 1 attached, 0 detached, 1 unchanged"
                                            in line for line in t.err)), t.stderr
            assert t.proc.poll() is None                         # SIGHUP did not stop it
            assert progs_before < t.held().progs                 # the old program kept
            Workload(comm, f"storm:{tmp_path / 'y'}:200").go()
            new = f'bpfprobes_opensnoop_opens_total{{comm="{comm}",errno="ENOENT"}}'
            assert prom.until(lambda: [v for _, v in prom.vector(new)] == [200]), \
                prom.vector(new)
            assert prom.until(lambda: [v for _, v in prom.vector(expr)] == [500])
            assert prom.vector(f"resets({expr}[5m])")[0][1] == 0
            # a file that no longer parses (a wrong type; nesting that would exhaust the
            # parser's recursion): one line each, the running set stays
            for bad in ("[[count]]\nname = 1\n", "x = " + "[" * 5000 + "]" * 5000 + "\n"):
                refused = sum("reload refused" in line for line in t.err)
                path.write_text(bad)
                os.kill(t.proc.pid, signal.SIGHUP)
                assert t.wait_until(lambda: sum("reload refused" in line for line in t.err)
                                    > refused), t.stderr
            assert "Traceback" not in t.stderr
            assert ("bpfprobes_part_up", frozenset({"part": "opensnoop"}.items())) in \
                scrape(address)
        finally:
            prom.stop()
    assert t.proc.returncode == 0


def test_a_stop_during_a_reload_is_a_stop_with_a_summary(tmp_path):
    """SIGTERM while a reload compiles its new part: status 0, the summary, and
    every part (the running one, the half-started one) detached."""
    path = tmp_path / "session.toml"
    path.write_text('[[opensnoop]]\n')
    t = Tool("serve", "--listen", "127.0.0.1:0", str(path)).wait_live()
    held = t.held().progs
    assert held
    path.write_text('[[opensnoop]]\n[[count]]\nname = "execs"\n'
                    'targets = ["t:sched:sched_process_exec"]\n')
    os.kill(t.proc.pid, signal.SIGHUP)
    assert t.wait_until(lambda: len(t.held().progs) > len(held) or any(
        "reloaded" in line for line in t.err), 60)
    assert t.stop(signal.SIGTERM, timeout=60) == 0, t.stderr
    assert any("stopped by signal:SIGTERM" in line for line in t.err), t.stderr
    assert "Traceback" not in t.stderr


def test_a_comm_storm_stays_within_max_series(tmp_path):
    """10,000 random comms, max_series 500: at most 500 label sets, the rest under
    other="true", and every one of the storm's opens counted somewhere."""
    n, most = 10_000, 500
    text = f"""
[[count]]
name = "storm"
targets = {json.dumps(OPENS)}
by = ["comm"]
max_series = {most}
"""
    missing = tmp_path / "missing"
    dropped = ("bpfprobes_series_dropped_total", frozenset({"part": "storm"}.items()))

    def split(samples: dict) -> tuple[dict, float]:
        """(the storm part's own series by comm, its other row)."""
        rows = [(dict(k[1]), v) for k, v in samples.items() if k[0] == "bpfprobes_storm_total"]
        return ({m["comm"]: v for m, v in rows if m.get("other") != "true"},
                sum(v for m, v in rows if m.get("other") == "true"))

    def stormed(samples: dict) -> float:
        """The storm's opens counted: in a row of a random comm, or in the other row."""
        series, other = split(samples)
        return other + sum(v for c, v in series.items()
                           if len(c) == 14 and set(c) <= set("0123456789abcdef"))

    with serve(tmp_path, text) as t:
        address = address_of(t)
        rss_before = scrape(address)[("process_resident_memory_bytes", frozenset())]
        assert Workload(unique("storm")[:15], f"comms:{missing}:{n}").go() == [n]
        assert t.wait_until(lambda: stormed(scrape(address)) >= n, 30)  # none lost
        samples = scrape(address)
    series, other = split(samples)
    assert len(series) <= most
    assert samples[dropped] >= n - most and other >= samples[dropped]
    # memory: the table is the kernel's, fixed; the exporter holds ~500 series
    assert samples[("process_resident_memory_bytes", frozenset())] < rss_before + (64 << 20)


BAD = [
    ("unknown key", '[[count]]\nname = "a"\ntargets = ["t:sched:sched_switch"]\ncolour = 1\n',
     2, "bad.toml:4: [[count]]: unknown key 'colour'"),
    ("bad spec", '[[probe]]\nname = "a"\nspecs = ["q:nothing"]\n', 2, "bad.toml:1: [[probe]] a: "),
    ("bad by", '[[opensnoop]]\nby = ["path"]\n', 2,
     "bad.toml:2: [[opensnoop]] by: 'path' is no label here"),
    ("duplicate names", '[[opensnoop]]\n\n[[opensnoop]]\n', 2,
     "bad.toml:3: two parts are named 'opensnoop' (the other at line 1)"),
    ("string label", '[[probe]]\nname = "a"\n'
     'specs = ["t:syscalls:sys_enter_openat filename:string"]\nby = ["filename"]\n', 2,
     "is a string: strings are no labels"),
    ("not toml", "[[count]\n", 2, "bad.toml: not TOML"),
]


@pytest.mark.parametrize("text,status,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_session_files_are_one_line_and_attach_nothing(tmp_path, text, status, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    r = run_tool("serve", "--listen", "127.0.0.1:0", str(path))
    assert r.returncode == status, r.stderr
    [line, *hint] = r.stderr.splitlines()
    assert line.startswith("bpfprobes serve: error: ") and message in line, r.stderr
    assert len(hint) <= 1 and "Traceback" not in r.stderr
    assert not r.held.progs and not r.held.maps


def test_a_port_in_use_is_one_line_and_nothing_attached(tmp_path):
    (tmp_path / "s.toml").write_text('[[opensnoop]]\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_tool("serve", "--listen", f"127.0.0.1:{port}", str(tmp_path / "s.toml"))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == f"bpfprobes serve: error: cannot serve metrics on " \
                                       f"127.0.0.1:{port}: Address already in use"
    assert not r.held.progs and not r.held.maps


def test_a_part_this_kernel_cannot_run_is_down_and_the_rest_serve(tmp_path):
    """One file for a fleet: a part whose function this kernel lacks is down (0, a log
    line), the others are up."""
    text = '[[probe]]\nname = "ghost"\nspecs = ["p:bpfp_no_such_function"]\n[[opensnoop]]\n'
    with serve(tmp_path, text) as t:
        samples = scrape(address_of(t))
    up = {dict(k[1])["part"]: v for k, v in samples.items() if k[0] == "bpfprobes_part_up"}
    assert up == {"ghost": 0, "opensnoop": 1}
    assert any("part ghost: down (" in line for line in t.err), t.stderr

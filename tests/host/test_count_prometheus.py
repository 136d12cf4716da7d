"""`count --prometheus ADDR:PORT` (issue 13, its first quick flag) on this kernel: a
workload's own calls, counted in the kernel, reach /metrics exactly, as
prometheus_client's own parser reads them back; a port in use is one line and
nothing attached."""
from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tooling import Tool, Workload, run_tool, unique

TARGET = "t:syscalls:sys_enter_openat"


def scrape(url: str) -> dict:
    """{(name, frozenset(labels)): value} of every sample /metrics serves."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def calls_of(samples: dict, comm: str) -> float | None:
    key = ("bpfprobes_calls_total",
           frozenset({"target": "syscalls:sys_enter_openat", "comm": comm}.items()))
    return samples.get(key)


def test_a_workloads_opens_reach_metrics_exactly(tmp_path):
    n = 1500
    # a comm the text format must escape (a quote, a backslash), 15 bytes
    comm = 'p"r\\' + unique("")[:11]
    w = Workload(comm, f"storm:{tmp_path / 'missing'}:{n}")
    with Tool("count", "--json", "--by", "comm", "--prometheus", "127.0.0.1:0", TARGET) as t:
        [meta] = t.json("meta")
        url = meta["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        assert calls_of(scrape(url), comm) is None          # nothing yet
        w.go()
        deadline, got = time.monotonic() + 30, None
        while time.monotonic() < deadline:       # the snapshot is at most 0.5 s old
            got = calls_of(scrape(url), comm)
            if got == n:
                break
            time.sleep(0.2)
        samples = scrape(url)
    assert got == n, got
    assert samples[("bpfprobes_lost_events_total", frozenset())] == 0
    assert samples[("process_resident_memory_bytes", frozenset())] > 0    # the process collector
    [summary] = t.json("summary")
    assert summary["events"] >= n and summary["lost"] == 0


def test_a_port_in_use_is_one_line_and_nothing_attached():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_tool("count", "-d", "5", "--prometheus", f"127.0.0.1:{port}", TARGET)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == \
        f"bpfprobes count: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    assert not r.held.progs and not r.held.maps

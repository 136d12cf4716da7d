"""bpfprobes serve with real kprobes in the VM: tools/session.example.toml, every
part up (its kprobe part too: down on the host, which has no kprobes), a
workload's failed opens counted exactly and timed by the kretprobe part."""
from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tooling import IN_VM, ROOT, Tool, Workload, unique

N = 300


def loopback_up() -> None:
    """The VM's network may start with lo down: the exporter serves on 127.0.0.1."""
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not IN_VM:
        return None
    loopback_up()
    comm = unique("vmsrv")[:15]
    missing = tmp_path_factory.mktemp("serve") / "missing"
    w = Workload(comm, f"storm:{missing}:{N}")
    t = Tool("serve", "--listen", "127.0.0.1:0", str(ROOT / "tools/session.example.toml"),
             live_timeout=900).wait_live()
    line = next(line for line in t.err if ": serving http" in line)
    address = line.split("serving http://", 1)[1].split("/metrics", 1)[0]
    assert w.go() == [N]

    def samples() -> dict:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}
    key = ("bpfprobes_openat2_latency_seconds_count",
           frozenset({"probe": "do_sys_openat2__return", "comm": comm}.items()))
    t.wait_until(lambda: samples().get(key) == N, 60)
    got = samples()
    t.stop(timeout=120)
    return {"samples": got, "comm": comm, "tool": t}


def test_every_part_of_the_example_is_up(run):
    up = {dict(k[1])["part"]: v for k, v in run["samples"].items()
          if k[0] == "bpfprobes_part_up"}
    assert up == {"opens": 1, "opensnoop": 1, "execs": 1, "openat2": 1, "getaddrinfo": 1}, \
        run["tool"].stderr


def test_the_kretprobe_part_times_every_failed_open(run):
    s, comm = run["samples"], run["comm"]
    labels = frozenset({"probe": "do_sys_openat2__return", "comm": comm}.items())
    assert s[("bpfprobes_openat2_latency_seconds_count", labels)] == N
    assert s[("bpfprobes_openat2_latency_seconds_bucket", labels | {("le", "+Inf")})] == N
    assert s[("bpfprobes_openat2_latency_seconds_sum", labels)] > 0
    # the filter (ret < 0) is on the return; the entry probe counts every call
    assert s[("bpfprobes_openat2_events_total", labels)] == N


def test_the_tracepoint_parts_count_the_same_opens(run):
    s, comm = run["samples"], run["comm"]
    assert s[("bpfprobes_opens_total", frozenset({"comm": comm}.items()))] == N
    assert s[("bpfprobes_opensnoop_opens_total",
              frozenset({"comm": comm, "errno": "ENOENT"}.items()))] == N
    assert run["tool"].proc.returncode == 0

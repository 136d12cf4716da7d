"""Session files (serve): what a good file becomes, and every mistake as one line
naming the file, the line and the key, before anything touches the kernel."""
import os

import pytest

from bpfprobes.base.errors import UsageError
from bpfprobes.plan import sessionfile
from bpfprobes.plan.runconfig import RateLimit

GOOD = """\
listen = "127.0.0.1:9500"

[[count]]                                   # bpfprobes_opens_total{comm="..."}
name = "opens"
targets = ["t:syscalls:sys_enter_openat", "t:syscalls:sys_enter_openat2"]
by = ["comm"]

[[probe]]
name = "openat2"
specs = ["p:do_sys_openat2", "r:do_sys_openat2 ret=$retval"]
latency = true
by = ["comm", "errno"]
filter = "ret < 0"
rate_limit = "500/cpu"

[[opensnoop]]
max_series = 50
"""


def test_a_good_file():
    s = sessionfile.parse(GOOD, "s.toml")
    assert s.listen == ("127.0.0.1", 9500)
    count, probe, snoop = s.parts
    assert (count.kind, count.name, count.line, count.by) == ("count", "opens", 3, ("comm",))
    assert count.targets == ("t:syscalls:sys_enter_openat", "t:syscalls:sys_enter_openat2")
    assert (probe.latency, probe.filter, probe.rate_limit) == (True, "ret < 0",
                                                              RateLimit(500, True))
    assert (snoop.name, snoop.by, snoop.max_series) == ("opensnoop", ("comm", "errno"), 50)
    assert count.max_series == 1000 and count.rate_limit is None


def test_listen_defaults_to_loopback():
    assert sessionfile.parse("[[opensnoop]]\n", "s.toml").listen == ("127.0.0.1", 9435)


BAD = [
    ('[[count]]\nname = "a"\ntargets = ["x"]\ncolour = "red"\n', "s.toml:4: [[count]]: "
     "unknown key 'colour'"),
    ('[[count]]\nname = "a"\n', "s.toml:1: [[count]]: targets is required"),
    ('[[count]]\nname = "a"\ntargets = []\n', "s.toml:3: [[count]] targets is empty"),
    ('[[count]]\nname = "a"\ntargets = "vfs_read"\n', "s.toml:3: [[count]] targets: expected list"),
    ('[[count]]\nname = "a"\ntargets = [1]\n', "s.toml:3: [[count]] targets: expected a list of "
     "strings"),
    ('[[probe]]\nname = "a"\nspecs = ["p:x"]\nlatency = "yes"\n', "s.toml:4: [[probe]] latency: "
     "expected bool"),
    ('[[opensnoop]]\nmax_series = true\n', "s.toml:2: [[opensnoop]] max_series: expected int"),
    ('[[opensnoop]]\nmax_series = 0\n', "s.toml:2: [[opensnoop]] max_series: 1 to"),
    ('[[opensnoop]]\nby = ["path"]\n', "s.toml:2: [[opensnoop]] by: 'path' is no label here"),
    ('[[opensnoop]]\nby = ["comm", "comm"]\n', "s.toml:2: [[opensnoop]] by names a label twice"),
    ('[[probe]]\nname = "a"\nspecs = ["p:x"]\nby = ["bad-name"]\n', "s.toml:4: [[probe]] by: "
     "'bad-name' is no label here"),
    ('[[opensnoop]]\nrate_limit = "5/node"\n', "s.toml:2: [[opensnoop]] rate_limit: N or N/cpu"),
    ('[[opensnoop]]\nname = "Opens-1"\n', "s.toml:2: [[opensnoop]] name 'Opens-1': a metric name"),
    ('[[count]]\nname = "lost_events"\ntargets = ["x"]\n', "s.toml:1: [[count]] lost_events "
     "would make the metric bpfprobes_lost_events, which is the exporter's own"),
    ('[[count]]\nname = "x_events"\ntargets = ["x"]\n[[probe]]\nname = "x"\nspecs = ["p:f"]\n',
     "s.toml:4: [[probe]] x would make the metric bpfprobes_x_events, which is part x_events's"),
    ('[[probe]]\nname = "a"\nspecs = ["p:f le=$arg1"]\nby = ["le"]\n', "s.toml:4: [[probe]] by: "
     "'le' is no label here"),
    ('[[probe]]\nname = "a"\nspecs = ["p:f x=$arg1"]\nby = ["__name__"]\n', "s.toml:4: [[probe]] "
     "by: '__name__' is no label here"),
    ('[[probe]]\nname = "a"\nspecs = ["p:f x=$arg1"]\nby = ["other"]\n', "s.toml:4: [[probe]] "
     "by: 'other' is no label here"),
    ("x = " + "[" * 2000 + "]" * 2000 + "\n", "s.toml: not TOML we read: nested too deeply"),
    ('[[opensnoop]]\nmax_series = 100001\n', "s.toml:2: [[opensnoop]] max_series: 1 to 100000"),
    ('[[opensnoop]]\n\n[[opensnoop]]\n', "s.toml:3: two parts are named 'opensnoop' (the other "
     "at line 1)"),
    ('listen = "nowhere"\n[[opensnoop]]\n', "s.toml:1: listen: an address is ADDR:PORT"),
    ('port = 9435\n[[opensnoop]]\n', "s.toml:1: unknown key 'port'"),
    ('[[tracer]]\nname = "a"\n', "s.toml:1: unknown key 'tracer'"),
    ('[count]\nname = "a"\n', "s.toml:1: count is a table of parts: [[count]]"),
    ("[[count]\n", "s.toml: not TOML: "),
    ("", "s.toml: no parts"),
    ('[[opensnoop]]\nname = "\\u001b[2J"\n', "s.toml:2: [[opensnoop]] name '\\x1b[2J'"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_each_mistake_is_one_line_with_its_place(text, message):
    with pytest.raises(UsageError) as e:
        sessionfile.parse(text, "s.toml")
    assert e.value.what.startswith(message), e.value.what
    assert "\n" not in e.value.what and "\x1b" not in e.value.what


def test_files_that_cannot_be_read(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)                         # nobody writes: a blocking open would hang
    with pytest.raises(UsageError, match="is not a regular file"):
        sessionfile.load(str(fifo))
    with pytest.raises(UsageError, match="is not a regular file"):
        sessionfile.load(str(tmp_path))
    with pytest.raises(UsageError, match="cannot read"):
        sessionfile.load(str(tmp_path / "missing.toml"))
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (sessionfile.MAX_FILE + 1))
    with pytest.raises(UsageError, match="larger than"):
        sessionfile.load(str(big))
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[[opensnoop]]\nname = "caf\xe9"\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        sessionfile.load(str(latin))

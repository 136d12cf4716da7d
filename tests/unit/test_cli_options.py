"""Every option a tool's parser takes reaches the tool: the parser's
destinations and the tool's Options fields are the same set (cli/common.options
copies the one into the other by name, and would drop a name it does not know)."""
import dataclasses

import pytest

from bpfprobes.cli import count, doctor, execsnoop, irq, opensnoop, probe, serve
from bpfprobes.tools import count as count_tool, doctor as doctor_tool, \
    execsnoop as execsnoop_tool, irq as irq_tool, opensnoop as opensnoop_tool, \
    probe as probe_tool, serve as serve_tool

PAIRS = [(doctor.build_parser, doctor_tool.Options), (opensnoop.build_parser, opensnoop_tool.Options),
         (execsnoop.build_parser, execsnoop_tool.Options), (count.build_parser, count_tool.Options),
         (irq.build_parser, irq_tool.Options), (probe.build_parser, probe_tool.Options),
         (probe.build_kprobe_parser, probe_tool.Options),
         (serve.build_parser, serve_tool.Options)]


@pytest.mark.parametrize("build, options", PAIRS, ids=lambda x: getattr(x, "__qualname__", ""))
def test_parser_and_options_name_the_same_things(build, options):
    dests = {a.dest for a in build()._actions if a.dest != "help"}
    dests = (dests - {"definition"}) | ({"specs"} if "definition" in dests else set())
    assert dests == {f.name for f in dataclasses.fields(options)}


def test_defaults_agree():
    """What a run without options gets is what the Options default says."""
    args = opensnoop.build_parser().parse_args([])
    from bpfprobes.cli import common
    assert common.options(args, opensnoop_tool.Options) == opensnoop_tool.Options()


@pytest.mark.parametrize("text, want", [("127.0.0.1:9435", ("127.0.0.1", 9435)),
                                        ("[::1]:9435", ("::1", 9435)),
                                        (":9435", ("0.0.0.0", 9435)),
                                        ("localhost:0", ("localhost", 0))])
def test_listen_addresses(text, want):
    from bpfprobes.cli import common
    assert common.listen_arg(text) == want


@pytest.mark.parametrize("text", ["9435", "host:", "host:65536", "host:-1", "host:http"])
def test_bad_listen_addresses_are_refused(text):
    import argparse
    from bpfprobes.cli import common
    with pytest.raises(argparse.ArgumentTypeError):
        common.listen_arg(text)

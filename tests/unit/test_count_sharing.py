"""How count attaches kernel functions (countplan.attaching) on each kind of
kernel, and the descriptor room it asks for (fdlimit)."""
from __future__ import annotations

import resource

import pytest

from bpfprobes.base import fdlimit
from bpfprobes.base.errors import KernelError
from bpfprobes.kernel import features
from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.plan import countplan
from bpfprobes.plan.attach import Attach

TARGETS = [countplan.Target("kprobe", "vfs_read", Attach("kprobe", "vfs_read", "count_0")),
           countplan.Target("tracepoint", "sched:sched_switch",
                            Attach("tracepoint", "sched:sched_switch", "count_1")),
           countplan.Target("kprobe", "vfs_write", Attach("kprobe", "vfs_write", "count_2"))]


KALLSYMS = (b"ffffffff81000100 T vfs_read\n"
            b"ffffffff81000200 T vfs_write\n"
            b"ffffffff81000300 t sched_switch_helper\n")
# a static function of one name in two files: kallsyms lists it twice
TWICE = KALLSYMS + b"ffffffff81000400 t ext4_es_is_delayed\nffffffff81000500 t ext4_es_is_delayed\n"


class _Kernel:
    def __init__(self, text: bytes = KALLSYMS) -> None:
        self.kallsyms = Kallsyms(text=text)


def kernel_with(monkeypatch, text: bytes = KALLSYMS, **have):
    monkeypatch.setattr(features, "check",
                        lambda k, name: features.Evidence(have.get(name, False), "test"))
    return _Kernel(text)


def test_kprobe_multi_takes_every_kernel_function_in_one_link(monkeypatch):
    k = kernel_with(monkeypatch, attach_cookies=True, kprobe_multi=True)
    plan = countplan.attaching(k, TARGETS)
    multi, tp = plan.attaches
    assert multi.kind == "kprobe_multi" and multi.fn == countplan.MULTI_FN
    # each member keeps its target index as its cookie (the table's row)
    assert [(m.target, m.cookie, m.fn) for m in multi.members] == \
        [("vfs_read", 0, countplan.COOKIE_FN), ("vfs_write", 2, countplan.COOKIE_FN)]
    assert (tp.kind, tp.fn, tp.cookie) == ("tracepoint", "count_1", None)
    assert plan.counters == [1]                   # only the tracepoint has a function
    assert countplan.sharing(plan.attaches) == "one kprobe_multi link"
    assert multi.describe() == "kprobe_multi 2 functions (vfs_read, vfs_write)"


def test_without_kprobe_multi_a_link_each_with_its_cookie(monkeypatch):
    k = kernel_with(monkeypatch, attach_cookies=True)
    plan = countplan.attaching(k, TARGETS)
    assert [(a.target, a.cookie) for a in plan.attaches] == \
        [("vfs_read", 0), ("vfs_write", 2), ("sched:sched_switch", None)]
    assert countplan.sharing(plan.attaches) == "a link per function, one program"
    # what a refused kprobe_multi falls back to reads the same
    multi = countplan.attaching(kernel_with(monkeypatch, attach_cookies=True, kprobe_multi=True),
                                TARGETS).attaches[0]
    assert countplan.sharing(list(multi.members)) == "a link per function, one program"


def test_without_attach_cookies_a_function_per_target(monkeypatch):
    plan = countplan.attaching(kernel_with(monkeypatch), TARGETS)
    assert plan.attaches == [t.attach for t in TARGETS] and plan.counters == [0, 1, 2]
    assert countplan.sharing(plan.attaches) == "a program per target"


def test_a_name_listed_twice_is_probed_at_each_address_with_one_cookie(monkeypatch):
    targets = [*TARGETS, countplan.Target("kprobe", "ext4_es_is_delayed",
                                          Attach("kprobe", "ext4_es_is_delayed", "count_3"))]
    k = kernel_with(monkeypatch, TWICE, attach_cookies=True, kprobe_multi=True)
    names, addrs, _tp = countplan.attaching(k, targets).attaches
    assert [m.target for m in names.members] == ["vfs_read", "vfs_write"]
    # one link takes names or addresses: the copies go in a second, by address
    assert [(m.target, m.offset, m.cookie) for m in addrs.members] == \
        [("", 0xffffffff81000400, 3), ("", 0xffffffff81000500, 3)]
    assert addrs.describe() == "kprobe_multi 2 functions (0xffffffff81000400, 0xffffffff81000500)"
    per_link = countplan.attaching(kernel_with(monkeypatch, TWICE, attach_cookies=True),
                                   targets).attaches
    assert [(a.target, a.offset, a.cookie) for a in per_link if a.cookie == 3] == \
        [("", 0xffffffff81000400, 3), ("", 0xffffffff81000500, 3)]


@pytest.fixture
def limits(monkeypatch):
    state = {"limit": (1024, 4096), "open": 10}
    monkeypatch.setattr(fdlimit, "open_now", lambda: state["open"])
    monkeypatch.setattr(resource, "getrlimit", lambda _r: state["limit"])

    def setrlimit(_r, value):
        soft, hard = value
        if hard > state["limit"][1] and not state.get("root"):
            raise ValueError("not allowed to raise maximum limit")
        state["limit"] = value
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return state


def test_room_that_fits_changes_nothing(limits):
    assert fdlimit.ensure(500) == 1024 and limits["limit"] == (1024, 4096)


def test_the_soft_limit_is_raised_toward_the_hard_one(limits):
    want = 10 + 1200 + fdlimit.MARGIN
    assert fdlimit.ensure(1200) == want and limits["limit"] == (want, 4096)


def test_past_the_hard_limit_root_raises_both_others_get_one_line(limits):
    with pytest.raises(KernelError, match="hard limit of open files is 4096"):
        fdlimit.ensure(5000)
    assert limits["limit"] == (1024, 4096)
    limits["root"] = True
    want = 10 + 5000 + fdlimit.MARGIN
    assert fdlimit.ensure(5000) == want and limits["limit"] == (want, want)


def test_unlimited_is_left_alone(limits):
    limits["limit"] = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    assert fdlimit.ensure(10**6) == resource.RLIM_INFINITY

"""The in-kernel metrics table's rows (bpf_c/metric_row.h, as bytes) -> Prometheus
families: sums over CPUs, labels as asked, log2 buckets made cumulative, the
`other` rows, and label values from the traced system kept exact."""
import struct

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpfprobes.plan import metricplan
from bpfprobes.present import metricrows


def key(probe=0, pid=0, err=-1, comm=b"", args=(0, 0, 0, 0)) -> bytes:
    return struct.pack("<IIiI16s4Q", probe, pid, err, 0, comm, *args)


def value(count, sum_ns=0, slots=(), negative=0) -> bytes:
    """One CPU's row as metric_row.h lays it out: with buckets, the negatives first."""
    if not slots:
        return struct.pack("<QQ", count, sum_ns)
    return struct.pack(f"<QQQ{len(slots)}Q", count, sum_ns, negative, *slots)


def exposed(*families) -> dict:
    class One:
        def collect(self):
            return families
    reg = CollectorRegistry()
    reg.register(One())
    text = generate_latest(reg).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


LABELS = metricrows.Labels("probe", ("open", "open__return"), comm=True, errno=True,
                           args=(("fd", lambda v: str(v - (1 << 64) if v >> 63 else v)),))


def test_rows_are_summed_over_cpus_and_labelled():
    rows = [(key(1, comm=b"nginx", err=2, args=(2**64 - 1, 0, 0, 0)), [value(3), value(4)]),
            (key(1, comm=b"nginx", err=0, args=(5, 0, 0, 0)), [value(1), value(0)]),
            (key(0, comm=b"nginx"), [value(7), value(0)])]
    totals = metricrows.fold(rows, [], LABELS)
    got = exposed(metricrows.counter("x_events", "doc", LABELS, totals))
    assert got == {
        ("bpfprobes_x_events_total", frozenset({"probe": "open__return", "comm": "nginx",
                                                "errno": "ENOENT", "fd": "-1"}.items())): 7,
        ("bpfprobes_x_events_total", frozenset({"probe": "open__return", "comm": "nginx",
                                                "errno": "0", "fd": "5"}.items())): 1,
        # an entry has no return value: no errno label (empty is absent)
        ("bpfprobes_x_events_total", frozenset({"probe": "open", "comm": "nginx",
                                                "errno": "", "fd": "0"}.items())): 7}


def test_rows_differing_only_in_an_unasked_label_are_one_series():
    labels = metricrows.Labels(None, ("a", "b"), comm=True)
    rows = [(key(0, comm=b"x"), [value(2)]), (key(1, comm=b"x"), [value(3)])]
    assert {k: t.count for k, t in metricrows.fold(rows, [], labels).items()} == \
        {(("x",), False): 5}


def test_the_other_rows_carry_other_true():
    labels = metricrows.Labels("probe", ("a", "b"), comm=True)
    others = [(struct.pack("<I", 0), [value(0), value(0)]), (struct.pack("<I", 1),
                                                             [value(9), value(1)])]
    totals = metricrows.fold([(key(0, comm=b"x"), [value(1), value(0)])], others, labels)
    got = exposed(metricrows.counter("c", "doc", labels, totals))
    assert got == {("bpfprobes_c_total", frozenset({"probe": "a", "comm": "x", "other": ""}
                                                   .items())): 1,
                   ("bpfprobes_c_total", frozenset({"probe": "b", "comm": "", "other": "true"}
                                                   .items())): 10}


def test_log2_slots_become_cumulative_buckets():
    slots = [0] * metricplan.SLOTS
    slots[11], slots[21], slots[metricplan.SLOTS - 1] = 3, 2, 1    # ~1-2 us, ~1-2 ms, huge
    labels = metricrows.Labels("probe", ("r",))
    totals = metricrows.fold([(key(0), [value(6, 123_456_789, slots)])], [], labels)
    got = exposed(metricrows.histogram("lat_seconds", "doc", labels, totals))

    def bucket(le):
        return got[("bpfprobes_lat_seconds_bucket", frozenset({"probe": "r", "le": le}.items()))]
    # slot i holds [2^(i-1), 2^i) ns: the bucket le=2^i ns takes it whole
    assert bucket(repr(2 ** 10 / 1e9)) == 0 and bucket(repr(2 ** 11 / 1e9)) == 3
    assert bucket(repr(2 ** 20 / 1e9)) == 3 and bucket(repr(2 ** 21 / 1e9)) == 5
    assert bucket(repr(2 ** (metricplan.SLOTS - 2) / 1e9)) == 5      # the last bound
    assert bucket("+Inf") == 6
    assert got[("bpfprobes_lat_seconds_count", frozenset({"probe": "r"}.items()))] == 6
    assert got[("bpfprobes_lat_seconds_sum", frozenset({"probe": "r"}.items()))] == 0.123456789


def test_rows_without_timed_calls_are_no_histogram():
    labels = metricrows.Labels("probe", ("p",))
    totals = metricrows.fold([(key(0), [value(4, 0, [0] * metricplan.SLOTS)])], [], labels)
    assert not [s for f in [metricrows.histogram("h", "d", labels, totals)] for s in f.samples]


def test_label_values_from_the_traced_system_are_exact_and_escaped():
    labels = metricrows.Labels(None, ("p",), comm=True)
    comm = b'a"b\\c\nd\xff'
    totals = metricrows.fold([(key(0, comm=comm), [value(1)])], [], labels)
    text = generate_latest(_registry(metricrows.counter("c", "d", labels, totals))).decode()
    line = next(line for line in text.splitlines() if line.startswith("bpfprobes_c_total"))
    assert line == 'bpfprobes_c_total{comm="a\\"b\\\\c\\nd\\\\xff"} 1.0'


def _registry(family):
    class One:
        def collect(self):
            return [family]
    reg = CollectorRegistry()
    reg.register(One())
    return reg


def test_errno_labels():
    assert [metricrows.errno_label(e) for e in (-1, 0, 2, 512, 4000)] == \
        ["", "0", "ENOENT", "ERESTARTSYS", "4000"]


def test_health_families_per_part():
    fams = metricrows.health([("a", {"up": 1, "lost": 2}), ("b", {"up": 0})])
    got = exposed(*fams)
    assert got[("bpfprobes_part_up", frozenset({"part": "a"}.items()))] == 1
    assert got[("bpfprobes_part_up", frozenset({"part": "b"}.items()))] == 0
    assert got[("bpfprobes_lost_events_total", frozenset({"part": "a"}.items()))] == 2
    assert got[("bpfprobes_series_dropped_total", frozenset({"part": "b"}.items()))] == 0


def test_histogram_labels_as_bpftrace_prints_them():
    from bpfprobes.present import histogram
    log2 = histogram.Buckets(40)
    assert [log2.label(i) for i in (0, 1, 2, 3, 11, 21, 39)] == \
        ["[0]", "[1]", "[2, 4)", "[4, 8)", "[1K, 2K)", "[1M, 2M)", "[256G, ...)"]
    assert histogram.Buckets(40, signed=True).label(0) == "[0]"      # negatives: apart
    lin = histogram.Buckets(40, linear=100)
    assert [lin.label(i) for i in (0, 1, 39)] == ["[0, 100)", "[100, 200)", "[3900, ...)"]
    text = histogram.text([0, 3, 0, 6] + [0] * 36, log2)
    assert text.splitlines() == [
        "[1]                        3 |" + "@" * 26 + " " * 26 + "|",
        "[2, 4)                     0 |" + " " * 52 + "|",
        "[4, 8)                     6 |" + "@" * 52 + "|"]
    assert histogram.json_buckets([0, 3, 0, 6] + [0] * 36, log2) == [
        {"min": 1, "max": 2, "count": 3}, {"min": 2, "max": 4, "count": 0},
        {"min": 4, "max": 8, "count": 6}]
    # a signed value's negatives come first, as bpftrace's (..., 0)
    assert histogram.text([2] + [0] * 39, log2, negative=4).splitlines() == [
        "(..., 0)                   4 |" + "@" * 52 + "|",
        "[0]                        2 |" + "@" * 26 + " " * 26 + "|"]
    assert histogram.json_buckets([0] * 40, log2, negative=1) == [
        {"min": None, "max": 0, "count": 1}]
    wide = histogram.Buckets(65)          # --hist-of: every 64-bit value has its slot
    assert [wide.label(i) for i in (63, 64)] == ["[4E, 8E)", "[8E, ...)"]

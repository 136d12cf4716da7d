"""doctor's "verified" row: the running kernel's series and arch against the
record make test-kernels writes."""
import json

from bpfprobes.kernel import verified

ROWS = [{"kernel": "6.1", "release": "6.1.0-57-amd64", "arch": "x86_64", "tests": 60,
         "passed": 60, "whole": True, "date": "2026-12-02"},
        {"kernel": "arm64", "release": "6.1.0-57-arm64", "arch": "aarch64", "tests": 53,
         "passed": 53, "whole": True, "date": "2026-12-02"}]


def test_series_of_debian_and_other_releases():
    assert [verified.series(r) for r in ("6.1.0-57-amd64", "6.12.117+deb12-amd64",
                                         "6.18.44-fc-v1045", "odd")] == ["6.1", "6.12", "6.18", "odd"]


def test_matching_by_series_and_arch(tmp_path):
    (tmp_path / "verified.json").write_text(json.dumps(ROWS))
    rec = verified.rows(tmp_path / "verified.json")
    assert rec == ROWS and verified.listed(rec) == ["6.1 x86_64", "6.1 aarch64"]
    assert verified.matching("6.1.0-58-amd64", "x86_64", rec) == ROWS[0]      # a newer ABI
    assert verified.matching("6.1.0-57-arm64", "aarch64", rec) == ROWS[1]
    assert verified.matching("6.12.117+deb12-amd64", "x86_64", rec) is None
    assert verified.matching("6.1.0-57-amd64", "riscv64", rec) is None
    assert "whole VM tier, 53 of 53 passed" in verified.summary(ROWS[1])


def test_a_missing_or_broken_record_is_no_row(tmp_path):
    assert verified.rows(tmp_path / "absent.json") == []
    (tmp_path / "bad.json").write_text("{not json")
    assert verified.rows(tmp_path / "bad.json") == []
    (tmp_path / "odd.json").write_text('{"a": 1}')
    assert verified.matching("6.1.0-57-amd64", "x86_64", verified.rows(tmp_path / "odd.json")) \
        is None

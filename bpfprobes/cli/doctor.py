"""`bpfprobes doctor`'s command line (tools/doctor.py does the work)."""
from __future__ import annotations

import sys
from typing import Sequence

from bpfprobes.tools import doctor
from . import common

EXAMPLES = """\
    bpfprobes doctor             # a table of features and the evidence for each
    bpfprobes doctor --json      # the same as one JSON object
"""


def build_parser() -> common.Parser:
    p = common.parser("bpfprobes doctor", "Report what this kernel offers for tracing.", EXAMPLES)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def run(argv: Sequence[str]) -> int:
    return doctor.run(common.options(build_parser().parse_args(argv), doctor.Options))


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("bpfprobes doctor", run, argv)


if __name__ == "__main__":
    sys.exit(main())

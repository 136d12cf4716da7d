"""bpfprobes doctor: what this kernel offers, and what the tools will do with it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tabulate import tabulate

from bpfprobes import __version__
from bpfprobes.base.safetext import for_terminal
from bpfprobes.kernel import features, verified
from bpfprobes.kernel.running import Kernel, current


@dataclass(frozen=True)
class Options:
    json: bool = False          # one JSON object instead of tables


def plans(k: Kernel, have: dict[str, features.Evidence]) -> dict[str, str]:
    """What each tool will attach, given the features."""
    kprobes = have["kprobes"].available and have["kretprobes"].available
    ready = "kprobes + kretprobes on the syscall entry points" if kprobes else \
        "syscalls tracepoints (no kprobes here)"
    probe = []
    probe.append("kprobes, kretprobes" if kprobes else "no kprobes")
    probe += ["uprobes"] if have["uprobes"].available else []
    probe += ["tracepoints"] if have["tracepoints"].available else []
    return {"opensnoop": ready, "execsnoop": ready, "probe": ", ".join(probe)}


def report(k: Kernel) -> dict:
    have = features.check_all(k)
    h = k.headers
    recorded = verified.rows()
    return {
        "version": __version__,
        "kernel": {"release": k.release, "arch": k.abi.name, "version": os.uname().version},
        "features": {name: e.available for name, e in have.items()},
        "evidence": {name: e.why for name, e in have.items()},
        "headers": {"status": h.status, "path": h.path, "source": h.source, "release": h.release},
        "privileges": features.privileges(),
        "tracefs": str(k.tracefs) if k.tracefs else None,
        "syscall_prefix": (k.syscall_symbol("openat") or ("", False))[0].removesuffix("openat")
        or None,
        "tools": plans(k, have),
        "verified": verified.matching(k.release, k.abi.name, recorded),
        "verified_on": verified.listed(recorded),
    }


def table(r: dict) -> str:
    rows = [(name, "yes" if ok else "no", r["evidence"][name]) for name, ok in r["features"].items()]
    h = r["headers"]
    rows.append(("headers", h["status"], f"{h['path']} ({h['source']})" if h["path"] else h["source"]))
    rows.append(("tracefs", "yes" if r["tracefs"] else "no", r["tracefs"] or "not mounted"))
    p = r["privileges"]
    rows.append(("privileges", "root" if p["root"] else f"euid {p['euid']}",
                 ", ".join(k for k in features.CAPS if p[k]) or "no BPF capabilities"))
    v = r["verified"]
    known = ", ".join(r["verified_on"]) or "none recorded"
    rows.append(("verified", "yes" if v else "no", verified.summary(v) if v else
                 f"not a series and arch the project's VM tier ran on ({known})"))
    # evidence quotes what the machine holds (paths, config lines, errors)
    rows = [[for_terminal(str(cell)) for cell in row] for row in rows]
    out = [for_terminal(f"kernel {r['kernel']['release']} ({r['kernel']['arch']})"), "",
           tabulate(rows, headers=["feature", "state", "evidence"]), "",
           tabulate(sorted(r["tools"].items()), headers=["tool", "will use"])]
    return "\n".join(out)


def run(o: Options) -> int:
    r = report(current())
    print(json.dumps(r, indent=2) if o.json else table(r))
    return 0

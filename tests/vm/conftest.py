"""VM tier: real kprobes/kretprobes on a distro kernel under QEMU.

On the host, the first VM test boots the VM once and runs every selected VM
test inside it (BPFPROBES_IN_VM=1); each host-side test item then reports the
outcome its twin had in the VM. Tests skipped in the VM, missing from its
report, or a VM that does not boot, fail here: this tier is never silently
skipped. Fixtures in this directory must be cheap on the host (check IN_VM).
"""
from __future__ import annotations

import os
import shlex
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import run_in_vm  # noqa: E402
from tooling import IN_VM, ROOT  # noqa: E402

_STATE: dict = {}


def pytest_collection_modifyitems(session, config, items):
    _STATE["ids"] = [i.nodeid for i in items if "tests/vm/" in i.nodeid]


def _vm_report(config) -> dict:
    if "report" in _STATE:
        return _STATE["report"]
    rw = tempfile.mkdtemp(prefix="bpfprobes-vm-")
    os.chmod(rw, 0o777)
    xml = Path(rw) / "results.xml"
    # the command reaches the VM on the kernel command line (2 KiB at most on x86):
    # the test ids go in a file in the shared directory, not in the command
    (Path(rw) / "ids.txt").write_text("\n".join(_STATE.get("ids", [])) + "\n")
    ids = f"$(cat {rw}/ids.txt)"
    cmd = (f"mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; "
           f"mount -t debugfs nodev /sys/kernel/debug 2>/dev/null; "
           f"BPFPROBES_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 BPFPROBES_CACHE=/tmp/bpfprobes-cache "
           f"{shlex.quote(sys.executable)} -m pytest -p no:cacheprovider -q -rA "
           f"--junitxml={xml} -o junit_family=xunit1 {ids}")
    print(f"\n[vm] booting the test VM for {len(_STATE.get('ids', []))} tests", flush=True)
    rc, out = run_in_vm(cmd, rwdirs=[rw], echo=config.getoption("verbose") > 0)
    log = Path(rw) / "vm-output.log"
    log.write_text(out)
    report = {"rc": rc, "log": str(log), "tail": "\n".join(out.splitlines()[-60:]), "cases": {}}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            key = (case.get("file") or "", case.get("name"))
            outcome, text = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = tag
                    text = (node.get("message") or "") + "\n" + (node.text or "")
                    break
            report["cases"][(case.get("classname"), case.get("name"))] = (outcome, text)
    _STATE["report"] = report
    return report


def _key(item) -> tuple[str, str]:
    mod = item.nodeid.split("::")[0].removesuffix(".py").replace("/", ".")
    cls = item.cls.__name__ if item.cls else None
    return (f"{mod}.{cls}" if cls else mod, item.name)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if IN_VM:
        return None                      # inside the VM: run the test for real
    report = _vm_report(pyfuncitem.config)
    found = report["cases"].get(_key(pyfuncitem))
    if found is None:
        pytest.fail(f"no VM result for {pyfuncitem.nodeid} (VM status {report['rc']}); "
                    f"full log: {report['log']}\n{report['tail']}", pytrace=False)
    outcome, text = found
    if outcome != "passed":
        pytest.fail(f"in the VM: {outcome}: {text.strip()}", pytrace=False)
    return True

"""VM tier: real kprobes/kretprobes on distro kernels under QEMU, one boot per kernel.

On the host, the first VM test of a kernel boots that kernel's VM once and runs
every selected test of that kernel inside it (BPFPROBES_IN_VM=1); each host-side
test item then reports the outcome its twin had in the VM. Tests skipped in the
VM, missing from its report, or a VM that does not boot, fail here: this tier is
never silently skipped. Fixtures in this directory must be cheap on the host
(check IN_VM).

Every VM test runs once per kernel of the plan (its id ends in [KERNEL]): the
whole tier on a kernel whose kernels.py entry says smoke=False, only the tests
marked `smoke` on the others. BPFPROBES_KERNELS=all (make test-kernels) runs the
whole tier on every kernel; BPFPROBES_KERNELS=NAME,NAME the whole tier on those.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels  # noqa: E402
from boot import guest_python, run_in_vm  # noqa: E402
from tooling import IN_VM, ROOT  # noqa: E402

_STATE: dict = {"reports": {}}
IN_KERNEL = os.environ.get("BPFPROBES_KERNEL", kernels.DEFAULT)
VERIFIED = kernels.BUILD / "verified.json"


def plan() -> dict[str, bool]:
    """Kernel name -> the whole tier (True) or the smoke set (False)."""
    if IN_VM:
        return {IN_KERNEL: True}
    asked = os.environ.get("BPFPROBES_KERNELS", "")
    if asked == "all":
        return {name: True for name in kernels.KERNELS}
    if asked:
        return {kernels.get(name.strip()).name: True for name in asked.split(",") if name.strip()}
    return {k.name: not k.smoke for k in kernels.KERNELS.values()}


def pytest_generate_tests(metafunc):
    if "vm_kernel" not in metafunc.fixturenames:
        return
    smoke = metafunc.definition.get_closest_marker("smoke") is not None
    names = [name for name, whole in plan().items() if whole or smoke]
    metafunc.parametrize("vm_kernel", names, ids=names, scope="module")


@pytest.fixture(autouse=True)
def vm_kernel(request) -> str:
    """The kernel this test runs on (its id's [KERNEL])."""
    return getattr(request, "param", IN_KERNEL)


def _kernel_of(item) -> str:
    return item.callspec.params["vm_kernel"] if hasattr(item, "callspec") else kernels.DEFAULT


def pytest_collection_finish(session):
    """The ids each kernel's boot runs: the items left after every selection (-m, -k)."""
    _STATE["ids"] = {}
    for i in session.items:
        if "tests/vm/" in i.nodeid:
            _STATE["ids"].setdefault(_kernel_of(i), []).append(i.nodeid)


def _vm_report(config, kernel: str) -> dict:
    if kernel in _STATE["reports"]:
        return _STATE["reports"][kernel]
    k = kernels.get(kernel)
    rw = tempfile.mkdtemp(prefix="bpfprobes-vm-")
    os.chmod(rw, 0o777)
    xml = Path(rw) / "results.xml"
    ids = _STATE["ids"].get(kernel, [])
    # the command reaches the VM on the kernel command line (2 KiB at most on x86):
    # the test ids go in a file in the shared directory, not in the command
    (Path(rw) / "ids.txt").write_text("\n".join(ids) + "\n")
    env = (f"BPFPROBES_IN_VM=1 BPFPROBES_KERNEL={shlex.quote(kernel)} PYTHONDONTWRITEBYTECODE=1 "
           f"BPFPROBES_CACHE=/tmp/bpfprobes-cache")
    if k.foreign:                            # the guest's Python: the checkout is the package
        env += f" PYTHONPATH={shlex.quote(str(ROOT))}"
    cmd = (f"uname -r > {rw}/release; {env} {shlex.quote(guest_python(k))} -m pytest "
           f"-p no:cacheprovider -q -rA --junitxml={xml} -o junit_family=xunit1 "
           f"$(cat {rw}/ids.txt)")
    print(f"\n[vm] booting the {kernel} VM ({k.arch}) for {len(ids)} tests", flush=True)
    started = time.monotonic()
    rc, out = run_in_vm(cmd, rwdirs=[rw], echo=config.getoption("verbose") > 0, kernel=kernel,
                        timeout=6000 if k.foreign else 3000)
    log = Path(rw) / "vm-output.log"
    log.write_text(out)
    release = Path(rw) / "release"
    report = {"rc": rc, "log": str(log), "tail": "\n".join(out.splitlines()[-60:]), "cases": {},
              "seconds": round(time.monotonic() - started),
              "release": release.read_text().strip() if release.exists() else "?"}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            outcome, text = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = tag
                    text = (node.get("message") or "") + "\n" + (node.text or "")
                    break
            report["cases"][(case.get("classname"), case.get("name"))] = (outcome, text)
    print(f"[vm] {kernel}: {sum(o == 'passed' for o, _ in report['cases'].values())} of "
          f"{len(ids)} passed in {report['seconds']} s (log: {log})", flush=True)
    _STATE["reports"][kernel] = report
    return report


def pytest_sessionfinish(session, exitstatus):
    """What each kernel's boot ran and passed, for `make test-kernels`' README table.
    A kernel this session did not boot keeps its row from the last run that did
    (`BPFPROBES_KERNELS=arm64 make test-kernels` renews the arm64 row only)."""
    if IN_VM or not _STATE["reports"]:
        return
    try:
        kept = [r for r in json.loads(VERIFIED.read_text())
                if r.get("kernel") not in _STATE["reports"] and r.get("kernel") in kernels.KERNELS]
    except (OSError, ValueError):
        kept = []
    rows = []
    for name, r in _STATE["reports"].items():
        k = kernels.get(name)
        rows.append({"kernel": name, "release": r["release"], "arch": k.arch,
                     "machine": k.machine, "tests": len(_STATE["ids"].get(name, [])),
                     "passed": sum(o == "passed" for o, _ in r["cases"].values()),
                     "whole": plan().get(name, False), "seconds": r["seconds"],
                     "date": time.strftime("%Y-%m-%d")})
    order = list(kernels.KERNELS)
    rows = sorted([*kept, *rows], key=lambda r: order.index(r["kernel"]))
    VERIFIED.parent.mkdir(parents=True, exist_ok=True)
    VERIFIED.write_text(json.dumps(rows, indent=1) + "\n")


def _key(item) -> tuple[str, str]:
    mod = item.nodeid.split("::")[0].removesuffix(".py").replace("/", ".")
    cls = item.cls.__name__ if item.cls else None
    return (f"{mod}.{cls}" if cls else mod, item.name)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if IN_VM:
        return None                      # inside the VM: run the test for real
    report = _vm_report(pyfuncitem.config, _kernel_of(pyfuncitem))
    found = report["cases"].get(_key(pyfuncitem))
    if found is None:
        pytest.fail(f"no VM result for {pyfuncitem.nodeid} (VM status {report['rc']}); "
                    f"full log: {report['log']}\n{report['tail']}", pytrace=False)
    outcome, text = found
    if outcome != "passed":
        pytest.fail(f"in the VM: {outcome}: {text.strip()}", pytrace=False)
    return True

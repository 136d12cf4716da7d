"""kernel/facts.py: answers kept per boot, used only when they pass their checks."""
from __future__ import annotations

import json
import os

import pytest

from bpfprobes.kernel import facts
from bpfprobes.kernel.facts import Facts

BOOT = "7fee0f4b-a119-46df-8838-96274b33a5c1"


@pytest.fixture()
def store(tmp_path, monkeypatch):
    boot = tmp_path / "boot_id"
    boot.write_text(BOOT + "\n")
    monkeypatch.setattr(facts, "BOOT_ID", boot)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    return cache / "facts"


def test_an_answer_is_computed_once_per_boot_then_read(store):
    calls = []

    def ask():
        calls.append(1)
        return 24
    assert Facts("6.1.0", store).ask("offset", "task_struct.tgid", ask) == 24
    assert Facts("6.1.0", store).ask("offset", "task_struct.tgid", ask) == 24
    assert calls == [1]
    saved = json.loads((store / f"{BOOT}.json").read_text())
    assert saved["answers"] == {"offset:task_struct.tgid": 24} and saved["release"] == "6.1.0"
    assert (store / f"{BOOT}.json").stat().st_mode & 0o077 == 0


def test_another_release_or_boot_asks_afresh_and_old_boots_are_removed(store):
    Facts("6.1.0", store).ask("symbol", "__x64_sys_openat", lambda: True)
    assert Facts("6.12.0", store).ask("symbol", "__x64_sys_openat", lambda: False) is False
    old = store / "00000000-0000-0000-0000-000000000000.json"
    old.write_bytes(b"{}")
    os.chmod(old, 0o600)
    Facts("6.12.0", store).ask("symbol", "__x64_sys_open", lambda: True)
    assert not old.exists() and (store / f"{BOOT}.json").exists()


@pytest.mark.parametrize("answers", [
    {"offset:task_struct.tgid": "24; rm -rf /"},     # not an int
    {"offset:task_struct.tgid": 1 << 40},            # out of range
    {"offset:task_struct.tgid": True},               # a bool is not an offset
    {"symbol:__x64_sys_openat": "yes"},              # not a bool
    {"symbol:bad name\n": True},                     # not a symbol
    {"offset:task_struct": 3},                       # not struct.member
])
def test_a_saved_answer_that_fails_its_check_is_asked_again(store, answers):
    Facts("6.1.0", store).ask("symbol", "x", lambda: True)         # makes the directory
    path = store / f"{BOOT}.json"
    path.write_text(json.dumps({"format": facts.FORMAT, "boot": BOOT, "release": "6.1.0",
                                "answers": answers}))
    os.chmod(path, 0o600)
    f = Facts("6.1.0", store)
    assert f.ask("offset", "task_struct.tgid", lambda: 7) == 7
    assert f.ask("symbol", "__x64_sys_openat", lambda: False) is False


def test_a_file_others_can_write_is_not_read(store):
    Facts("6.1.0", store).ask("offset", "task_struct.tgid", lambda: 24)
    os.chmod(store / f"{BOOT}.json", 0o666)
    assert Facts("6.1.0", store).ask("offset", "task_struct.tgid", lambda: 99) == 99


def test_without_a_boot_id_nothing_is_saved(store, monkeypatch, tmp_path):
    monkeypatch.setattr(facts, "BOOT_ID", tmp_path / "missing")
    assert Facts("6.1.0", store).ask("offset", "task_struct.tgid", lambda: 5) == 5
    assert not store.exists()


def test_an_answer_that_fails_its_check_is_returned_but_not_saved(store):
    assert Facts("6.1.0", store).ask("offset", "task_struct.tgid", lambda: None) is None
    assert Facts("6.1.0", store).ask("offset", "a.b", lambda: -1) == -1
    saved = json.loads((store / f"{BOOT}.json").read_text())["answers"]
    assert saved == {"offset:task_struct.tgid": None}


def test_a_file_nested_to_exhaust_the_parser_is_ignored(store):
    Facts("6.1.0", store).ask("symbol", "x", lambda: True)
    path = store / f"{BOOT}.json"
    path.write_text("[" * 200000)
    os.chmod(path, 0o600)
    assert Facts("6.1.0", store).ask("symbol", "x", lambda: False) is False


def _kernel(store, kallsyms: bytes):
    from bpfprobes.kernel.kallsyms import Kallsyms
    from bpfprobes.kernel.running import Kernel
    k = Kernel()
    k.facts = Facts(k.release, store)
    k.kallsyms = Kallsyms(text=kallsyms)
    return k


def test_only_the_images_symbols_are_kept_a_modules_are_looked_up_each_run(store):
    from bpfprobes.kernel import policy
    before = _kernel(store, b"ffffffff81000000 T _stext\nffffffff81000100 T do_sys_openat2\n")
    assert policy.traceable(before, "e1000_intr") is not None       # not loaded yet
    assert policy.traceable(before, "do_sys_openat2") is None
    # the module is loaded now: the same boot's next run sees it
    after = _kernel(store, b"ffffffff81000000 T _stext\n"
                           b"ffffffffc0000000 t e1000_intr\t[e1000]\n")
    assert policy.traceable(after, "e1000_intr") is None
    # the image's answer came from the saved facts (this kallsyms no longer lists it)
    assert after.in_image("do_sys_openat2")
    saved = json.loads((store / f"{BOOT}.json").read_text())["answers"]
    assert saved["symbol:e1000_intr"] is False and saved["symbol:do_sys_openat2"] is True


def test_an_offset_is_not_kept_when_btf_could_not_be_read(store):
    k = _kernel(store, b"")
    k.btf = None
    assert k.struct_offset("task_struct", "tgid") is None
    assert not (store / f"{BOOT}.json").exists()

"""An installed wheel (not the checkout) finds bpf_c/ and every C file in it."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_and_finds_bpf_c(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info",
                                                             "__pycache__", "out"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True)
    [wheel] = list(wheels.glob("bpfprobes-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    probe = ("import bpfprobes.gen.codegen as c, sys; d = c.c_dir(); print(d); "
             "print(sorted(p.name for p in d.iterdir() if p.suffix in ('.c', '.h')))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                          + probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    found_dir, found_files = out.stdout.splitlines()
    assert found_dir.startswith(str(target)), "the wheel must not fall back to a checkout"
    shipped = sorted(p.name for p in (ROOT / "bpf_c").iterdir() if p.suffix in (".c", ".h"))
    assert found_files == str(shipped)
    # the program text a tool compiles comes out whole from the installed copy
    text = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                           "import bpfprobes.gen.codegen as c; "
                           "print(c.ready_tool('opensnoop', {}, b'').text)"],
                          cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "int tp_enter_openat" in text and "struct open_event {" in text

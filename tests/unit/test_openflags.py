"""open(2) flag names: the -f filter and the flags_names column."""
import os

import pytest

from bpfprobes.kernel import openflags


@pytest.mark.parametrize("flags, names", [
    (os.O_RDONLY, "O_RDONLY"),
    (os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "O_WRONLY|O_CREAT|O_TRUNC"),
    (os.O_RDWR | os.O_SYNC, "O_RDWR|O_SYNC"),          # not O_DSYNC|O_SYNC
    (os.O_RDWR | os.O_TMPFILE, "O_RDWR|O_TMPFILE"),    # not O_DIRECTORY|...
    (os.O_RDONLY | 0o4000000000, "O_RDONLY|04000000000"),
    (3, "03"),
])
def test_describe(flags, names):
    assert openflags.describe(flags) == names


@pytest.mark.parametrize("name", ["O_WRONLY", "wronly", "o_wronly"])
def test_parse(name):
    assert openflags.parse(name) == os.O_WRONLY


def test_parse_unknown():
    with pytest.raises(KeyError):
        openflags.parse("O_BOGUS")

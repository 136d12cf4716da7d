"""Which of the probe tool's options go together: checked before anything else
is done (and before the modes' own modules are imported: a trace needs none)."""
from __future__ import annotations

from bpfprobes.base.errors import UsageError


def check(o) -> None:
    """probe's options that go together, before anything else is done: --hist sends no
    events, so nothing that shapes or bounds events goes with it; the histogram's own
    options need it; --by and -i need --count or --hist."""
    if getattr(o, "folded", False):
        clash = [flag for name, flag in (("count", "--count"), ("hist", "--hist"),
                                         ("summary", "--summary"), ("context", "--context"),
                                         ("max_events", "-n"), ("prometheus", "--prometheus"),
                                         ("dry_run", "--dry-run"), ("header", "-H"),
                                         ("quiet", "-q"), ("by", "--by"),
                                         ("interval", "-i")) if getattr(o, name)]
        if clash or o.backend == "tracefs":
            raise UsageError(f"--folded counts stacks in the kernel and prints them at exit: "
                             f"not with {', '.join(clash) or '--backend tracefs'}")
        check_unused(o)
        return
    if o.hist:
        clash = [flag for name, flag in (("count", "--count"), ("stack", "-s"),
                                         ("user_stack", "-U"), ("summary", "--summary"),
                                         ("context", "--context"), ("max_events", "-n"),
                                         ("prometheus", "--prometheus"),
                                         ("dry_run", "--dry-run")) if getattr(o, name)]
        if clash or o.backend == "tracefs":
            raise UsageError(f"--hist counts in the kernel and sends no events: not with "
                             f"{', '.join(clash) or '--backend tracefs'}")
        if o.hist_of is not None and o.unit != "us":
            raise UsageError("--unit is a latency's; --hist-of buckets the value as it is")
    else:
        check_unused(o)
    if (o.by or o.interval) and not (o.count or o.hist):
        raise UsageError(f"{'--by' if o.by else '-i'} goes with --count or --hist",
                         "add one, or drop it")


def check_unused(o) -> None:
    """--hist-of, --linear and --unit without --hist would say nothing: refused."""
    given = [flag for name, flag in (("hist_of", "--hist-of"), ("linear", "--linear"))
             if getattr(o, name, None) is not None] + (["--unit"] if o.unit != "us" else [])
    if given:
        raise UsageError(f"{', '.join(given)} shape a histogram: add --hist")

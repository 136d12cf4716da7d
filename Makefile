# The two commands a newcomer needs (as root): `make run` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
ARGS ?= opensnoop
CMD ?= bpfprobes doctor

KERNEL ?= 6.1
.PHONY: setup setup-test run test test-unit test-host test-vm test-kernels vm-run bench bench-attach soak fuzz clean

setup:
	@bash .ci/setup

setup-test:
	@WITH_TEST_PKGS=1 bash .ci/setup

# The main job: a tool on the live system until Ctrl-C (make run ARGS="execsnoop -x").
run: setup
	.venv/bin/bpfprobes $(ARGS)

# Every tier: unit (no root), host (real BPF here), vm (real kprobes in VMs: the whole
# tier on Debian 6.1, the smoke set on 6.12 and on arm64; tests/vm/kernels.py).
test: setup-test
	$(PY) -m pytest tests/unit tests/host tests/vm

test-unit: setup
	$(PY) -m pytest tests/unit

test-host: setup-test
	$(PY) -m pytest tests/host

test-vm: setup-test
	$(PY) -m pytest tests/vm

# The whole VM tier on every kernel of the matrix (6.1, 6.12, arm64), then the README's
# "Verified on" table from that run (BPFPROBES_KERNELS=6.12,arm64: only those)
test-kernels: setup-test
	BPFPROBES_KERNELS=$${BPFPROBES_KERNELS:-all} $(PY) -m pytest tests/vm; rc=$$?; \
	$(PY) tests/vm/verified.py; exit $$rc

# The fuzz test of every tool's command line for FUZZ_SECONDS (make test: 60 s of it),
# with its figures (examples, seconds, exit statuses) on stderr
FUZZ_SECONDS ?= 600
fuzz: setup-test
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -s tests/host/test_fuzz.py

# Boot a test VM (KERNEL=6.1, 6.12 or arm64) and run CMD as root in it: the checkout at
# the same path, bpfprobes, opensnoop and execsnoop on PATH running this checkout's code.
vm-run: setup-test
	$(PY) tests/vm/boot.py --kernel '$(KERNEL)' -- '$(CMD)'

# bpfprobes against its peers, side by side: open, exec and uprobe storms and a sustained
# ladder (~15 min; BENCH_ARGS=--vm: also the kprobe path in the test VM, ~10 min more);
# writes bench/RESULTS.md and the README's tables, then the exporter row (~2 min;
# EXPORTER_ARGS="--seconds 10"): bench/EXPORTER.md. BENCH_ARGS=--quick: under 2 min in
# all, printed only (the README keeps the last full run's figures)
BENCH_ARGS ?=
EXPORTER_ARGS ?= $(if $(findstring --quick,$(BENCH_ARGS)),--seconds 5 --no-write,)
bench: setup-test
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/exporter.py $(EXPORTER_ARGS)

# count, bpftrace and BCC's funccount on ~100 and ~1,000 kernel functions in the test VM:
# attach and detach time, cost per call (~15 min per kernel); writes bench/ATTACH.md
bench-attach: setup-test
	$(PY) bench/attach.py $(ATTACH_ARGS)

# A 10-minute opensnoop session at a steady 20,000 opens/s: RSS, CPU, every event
# accounted for (SOAK_ARGS="--tool execsnoop", "--minutes 1"); writes bench/SOAK.md
SOAK_ARGS ?=
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)


clean:
	rm -rf .venv build *.egg-info .pytest_cache

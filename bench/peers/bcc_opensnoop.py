#!/usr/bin/env python3
"""A peer for the bench: opensnoop the way BCC's tools/*.py are written.

BPF C in a Python string, two TRACEPOINT_PROBEs (entry stashes the filename
pointer per thread, exit sends a fixed-size event), BCC's perf buffer with its
defaults (64 pages per CPU, a wakeup on every sample) and a Python callback
per event that prints one line. Written for the bench; not part of bpfprobes.
"""
import sys

from bcc import BPF

PROGRAM = r"""
#include <uapi/linux/ptrace.h>

#define NAME_MAX 255

struct args_t {
    const char *fname;
};

struct data_t {
    u32 pid;
    int ret;
    char comm[16];      /* TASK_COMM_LEN, without including <linux/sched.h> */
    char fname[NAME_MAX];
};

BPF_HASH(infotmp, u64, struct args_t);
BPF_PERF_OUTPUT(events);

TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    u64 id = bpf_get_current_pid_tgid();
    struct args_t a = {.fname = args->filename};
    infotmp.update(&id, &a);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    u64 id = bpf_get_current_pid_tgid();
    struct args_t *a = infotmp.lookup(&id);
    if (a == 0)
        return 0;
    struct data_t data = {};
    data.pid = id >> 32;
    data.ret = args->ret;
    bpf_get_current_comm(&data.comm, sizeof(data.comm));
    bpf_probe_read_user_str(&data.fname, sizeof(data.fname), a->fname);
    events.perf_submit(args, &data, sizeof(data));
    infotmp.delete(&id);
    return 0;
}
"""

lost = 0


def main() -> int:
    b = BPF(text=PROGRAM, cflags=["-w"])
    print("%-7s %-16s %4s %3s %s" % ("PID", "COMM", "FD", "ERR", "PATH"))
    sys.stdout.flush()

    def print_event(cpu, data, size):
        event = b["events"].event(data)
        fd, err = (event.ret, 0) if event.ret >= 0 else (-1, -event.ret)
        print("%-7d %-16s %4d %3d %s" % (event.pid, event.comm.decode("utf-8", "replace"),
                                         fd, err, event.fname.decode("utf-8", "replace")))

    def lost_cb(count):
        global lost
        lost += count

    b["events"].open_perf_buffer(print_event, lost_cb=lost_cb)
    try:
        while True:
            b.perf_buffer_poll()
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    print(f"lost {lost} samples", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

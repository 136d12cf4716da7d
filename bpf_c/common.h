/* Shared pieces of the ready tools' BPF programs (BCC dialect).
 *
 * Everything that varies by architecture or kernel comes in as -D defines
 * from codegen.py: FUNC_ARGn / SYSCALL_ARGn / RET_REG are pt_regs members
 * taken from arch.py; TASK_* are struct offsets taken from BTF. What varies
 * from run to run (filters, our PID, a rate limit) is data in the program's
 * `config` map (config.h): the program's header declares its struct and
 * names it CONFIG_STRUCT before including this file.
 */
#ifndef BPFPROBES_COMMON_H
#define BPFPROBES_COMMON_H

#include "config.h"

/* The run's settings, written before anything was attached; never by us. */
BPF_F_TABLE("array", u32, struct CONFIG_STRUCT, config, 1, BPF_F_RDONLY_PROG);

static __always_inline const struct CONFIG_STRUCT *settings(void)
{
    u32 zero = 0;
    return config.lookup(&zero);
}

/* Every program's config starts with the run fields (config.h). */
#define RUN(c) ((const struct run_config *)(c))

/* Every sample that did not reach the perf buffer, whatever the reason (a full
 * buffer, a full in-flight map). Counted here rather than from perf's LOST
 * records, which the kernel emits only once the buffer has room again: after
 * the last overflow of a storm they may never come, and loss would go unsaid. */
BPF_PERCPU_ARRAY(drops, u64, 1);

static __always_inline void count_drop(void)
{
    u32 zero = 0;
    u64 *n = drops.lookup(&zero);
    if (n)
        (*n)++;
}

/* Wraps a perf_submit: a sample that failed to go out is counted. */
static __always_inline void submitted(int rc)
{
    if (rc < 0)
        count_drop();
}

/* --rate-limit: at most rate_limit events a second, for all CPUs together or
 * (rate_per_cpu) on each; an event over the limit is not sent and is counted
 * in `throttled`, which the tool reports as it reports loss. The window is the
 * current second of bpf_ktime_get_ns(). Across CPUs the reset at a second's
 * turn can race and let a few more through; the accounting stays exact: every
 * event is sent (or lost, counted in drops) or throttled, never neither. */
struct rate_window {
    u64 second;
    u64 count;
};
BPF_ARRAY(rate, struct rate_window, 1);
BPF_PERCPU_ARRAY(rate_cpu, struct rate_window, 1);
BPF_PERCPU_ARRAY(throttled, u64, 1);

static __always_inline int throttle(const struct run_config *c)
{
    if (!c->rate_limit)
        return 0;
    u32 zero = 0;
    struct rate_window *w = c->rate_per_cpu ? rate_cpu.lookup(&zero) : rate.lookup(&zero);
    if (!w)
        return 0;
    u64 second = bpf_ktime_get_ns() / 1000000000ULL;
    if (w->second != second) {
        w->second = second;
        w->count = 0;
    }
    if (__sync_fetch_and_add(&w->count, 1) < c->rate_limit)
        return 0;
    u64 *n = throttled.lookup(&zero);
    if (n)
        (*n)++;
    return 1;
}

/* Syscall argument n at a kprobe on the syscall's entry symbol. Behind an
 * arch wrapper (__x64_sys_*) the only argument is the user's pt_regs and the
 * syscall arguments sit in it under the *syscall* convention; a plain sys_*
 * function takes them under the function-call convention. */
#ifdef SYSCALL_WRAPPED
#define SC_ARG(ctx, n) ({                                                 \
        u64 __v = 0;                                                      \
        struct pt_regs *__r = (struct pt_regs *)(ctx)->FUNC_ARG1;         \
        bpf_probe_read_kernel(&__v, sizeof(__v), &__r->SYSCALL_ARG##n);   \
        __v; })
#else
#define SC_ARG(ctx, n) ((u64)(ctx)->FUNC_ARG##n)
#endif

/* A variable sample size the verifier can prove is within the buffer: the
 * empty asm hides what the compiler knows, so the bound check survives. */
static __always_inline u64 bounded(u64 size, u64 max)
{
    asm volatile("" : "+r"(size));
    return size > max ? max : size;
}

#define RETVAL(ctx) ((long)(ctx)->RET_REG)

/* Whether this task is left out: the tracer's own activity (BCC reading
 * tracefs while attaching) is noise; the rest are the user's filters. */
static __always_inline int task_filtered(u64 pid_tgid, const struct run_config *c)
{
    u32 tgid = pid_tgid >> 32;
    if (c->skip_pid && tgid == c->skip_pid)
        return 1;
    if (c->pid && tgid != c->pid)
        return 1;
    if (c->tid && (u32)pid_tgid != c->tid)
        return 1;
    if (c->uid != ANY_UID && (u32)bpf_get_current_uid_gid() != c->uid)
        return 1;
    if (c->cgroup && bpf_get_current_cgroup_id() != c->cgroup)
        return 1;
    return 0;
}

/* Parent's tgid through offsets from BTF, never from headers of another kernel. */
#ifdef TASK_REAL_PARENT
static __always_inline u32 parent_tgid(void)
{
    void *task = (void *)bpf_get_current_task();
    void *parent = 0;
    u32 ppid = 0;
    bpf_probe_read_kernel(&parent, sizeof(parent), task + TASK_REAL_PARENT);
    if (parent)
        bpf_probe_read_kernel(&ppid, sizeof(ppid), parent + TASK_TGID);
    return ppid;
}
#endif

#endif

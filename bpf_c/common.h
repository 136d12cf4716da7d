/* Shared pieces of the ready tools' BPF programs (BCC dialect).
 *
 * Everything that varies by architecture or kernel comes in as -D defines
 * from codegen.py: FUNC_ARGn / SYSCALL_ARGn / RET_REG are pt_regs members
 * taken from arch.py; TASK_* are struct offsets taken from BTF. Filters are
 * -D defines too, so a filtered-out event costs a compare, nothing more.
 */
#ifndef BPFPROBES_COMMON_H
#define BPFPROBES_COMMON_H

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

static __always_inline int task_filtered(u64 pid_tgid)
{
#ifdef SKIP_PID
    /* the tracer's own activity (BCC reading tracefs while attaching) is noise */
    if ((pid_tgid >> 32) == SKIP_PID)
        return 1;
#endif
#ifdef FILTER_PID
    if ((pid_tgid >> 32) != FILTER_PID)
        return 1;
#endif
#ifdef FILTER_TID
    if ((u32)pid_tgid != FILTER_TID)
        return 1;
#endif
#ifdef FILTER_UID
    if ((u32)bpf_get_current_uid_gid() != FILTER_UID)
        return 1;
#endif
#ifdef FILTER_CGROUP
    if (bpf_get_current_cgroup_id() != FILTER_CGROUP)
        return 1;
#endif
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

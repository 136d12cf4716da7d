/* opensnoop: open, openat, openat2 with their return value.
 *
 * The event is built at the syscall's return, because only then is the fd (or
 * errno) known. Built one of four ways: ATTACH_SYSCALL_EXIT (syscalls:sys_exit_
 * open* alone, the arguments from the task's saved registers), ATTACH_RAW_SYSCALLS
 * (raw_syscalls:sys_exit, the same from its pt_regs), or an entry that stashes the
 * arguments per thread and a return that finds them: ATTACH_KPROBE (syscall entry
 * symbols) or ATTACH_TRACEPOINT (the syscalls:sys_{enter,exit}_open* pairs).
 */
#include <uapi/linux/ptrace.h>
#include "opensnoop.h"
#include "common.h"
#include "syscall_tp.h"
#ifdef FULL_PATH
#include "fullpath.h"
#endif

struct open_args {
    const char *path;
    u64 flags;
    u32 mode;
    u16 syscall;
    s32 dirfd;          /* openat, openat2: the directory fd (-F) */
};

BPF_HASH(inflight, u64, struct open_args, INFLIGHT_MAX);
BPF_PERCPU_ARRAY(scratch, struct open_event, 1);
#ifdef OUTPUT_RINGBUF
/* One ring for all CPUs, written without a wakeup (BPF_RB_NO_WAKEUP): the
 * reader polls it (session/loop.py), so the traced program never pays for waking it,
 * and a ring costs less per event than a perf sample (bench/). */
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#define RB_NO_WAKEUP 1
#else
BPF_PERF_OUTPUT(events);
#endif

static __always_inline int flags_wanted(u64 flags, const struct opensnoop_config *c)
{
    if (!c->flags && !c->rdonly)
        return 1;
    return (flags & c->flags) || (c->rdonly && (flags & 3) == 0);
}

static __always_inline int enter(const char *path, u64 flags, u32 mode, u16 syscall,
                                 s32 dirfd)
{
    u64 id = bpf_get_current_pid_tgid();
    const struct opensnoop_config *c = settings();
    if (!c || task_filtered(id, RUN(c)) || !flags_wanted(flags, c))
        return 0;
    struct open_args a = {.path = path, .flags = flags, .mode = mode, .syscall = syscall,
                          .dirfd = dirfd};
    if (inflight.update(&id, &a) != 0)
        count_drop();
    return 0;
}

/* Build and send the event of one finished open (`a`: its arguments). */
static __always_inline int emit(void *ctx, u64 id, long ret, const struct open_args *a,
                                const struct opensnoop_config *c)
{
    if (c->failed_only && ret >= 0)
        return 0;
    if (throttle(RUN(c)))
        return 0;
    u32 zero = 0;
    struct open_event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    e->ts_ns = bpf_ktime_get_ns();
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->ret = ret;
    e->flags = a->flags;
    e->mode = a->mode;
    e->syscall = a->syscall;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    e->truncated = 0;
    u32 dir = 0;
#ifdef FULL_PATH
    char first = 0;
    bpf_probe_read_user(&first, 1, a->path);
    u16 cut = 0;
    if (first && first != '/')          /* relative: its directory first */
        dir = full_dir(e->path, a->syscall == SC_OPEN ? AT_FDCWD_VALUE : a->dirfd, &cut);
    if (cut)
        e->truncated = 2;
    dir &= OPEN_PATH_MAX - 1;
#endif
    int n = bpf_probe_read_user_str(e->path + dir, OPEN_PATH_MAX, a->path);
    u32 len = n > 0 ? n : 0;
    if (len >= OPEN_PATH_MAX) {
        /* the copy was cut (or fit exactly): the byte it replaced with NUL says which */
        char c = 0;
        bpf_probe_read_user(&c, 1, a->path + OPEN_PATH_MAX - 1);
        e->truncated |= c != 0;
        len = OPEN_PATH_MAX;
    }
    len = len ? dir + len : 0;
    e->path_len = len;
    u64 size = bounded(offsetof(struct open_event, path) + len, sizeof(*e));
#ifdef OUTPUT_RINGBUF
    submitted(events.ringbuf_output(e, size, RB_NO_WAKEUP));
#else
    submitted(events.perf_submit(ctx, e, size));
#endif
    return 0;
}

static __always_inline int leave(void *ctx, long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    struct open_args *a = inflight.lookup(&id);
    if (!a)
        return 0;
    const struct opensnoop_config *c = settings();
    if (c)
        emit(ctx, id, ret, a, c);
    inflight.delete(&id);
    return 0;
}

/* openat2's flags and mode live in a user struct open_how {u64 flags, mode, resolve} */
static __always_inline int enter_openat2(s32 dirfd, const char *path, const u64 *how)
{
    u64 fm[2] = {};
    bpf_probe_read_user(&fm, sizeof(fm), how);
    return enter(path, fm[0], (u32)fm[1], SC_OPENAT2, dirfd);
}

#ifdef ATTACH_KPROBE
int kp_open(struct pt_regs *ctx)
{
    return enter((const char *)SC_ARG(ctx, 1), SC_ARG(ctx, 2), SC_ARG(ctx, 3), SC_OPEN, 0);
}

int kp_openat(struct pt_regs *ctx)
{
    return enter((const char *)SC_ARG(ctx, 2), SC_ARG(ctx, 3), SC_ARG(ctx, 4), SC_OPENAT,
                 (s32)SC_ARG(ctx, 1));
}

int kp_openat2(struct pt_regs *ctx)
{
    return enter_openat2((s32)SC_ARG(ctx, 1), (const char *)SC_ARG(ctx, 2),
                         (const u64 *)SC_ARG(ctx, 3));
}

int kr_open(struct pt_regs *ctx)
{
    return leave(ctx, RETVAL(ctx));
}
#endif

#ifdef ATTACH_TRACEPOINT
int tp_enter_open(struct sys_enter_ctx *ctx)
{
    return enter((const char *)ctx->args[0], ctx->args[1], ctx->args[2], SC_OPEN, 0);
}

int tp_enter_openat(struct sys_enter_ctx *ctx)
{
    return enter((const char *)ctx->args[1], ctx->args[2], ctx->args[3], SC_OPENAT,
                 (s32)ctx->args[0]);
}

int tp_enter_openat2(struct sys_enter_ctx *ctx)
{
    return enter_openat2((s32)ctx->args[0], (const char *)ctx->args[1],
                         (const u64 *)ctx->args[2]);
}

int tp_exit_open(struct sys_exit_ctx *ctx)
{
    return leave(ctx, ctx->ret);
}
#endif

#if defined(ATTACH_RAW_SYSCALLS) || defined(ATTACH_SYSCALL_EXIT)
/* The arguments of one open syscall, read from the user's saved registers at its
 * exit (they still hold them), then its event: shared by both exit-only paths. */
static __always_inline int from_regs(void *ctx, const struct pt_regs *uregs, u16 syscall,
                                     long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    const struct opensnoop_config *c = settings();
    if (!c || task_filtered(id, RUN(c)))
        return 0;
    struct open_args a = {.syscall = syscall};
    struct pt_regs r;                   /* one copy, rather than a read per argument */
    bpf_probe_read_kernel(&r, sizeof(r), uregs);
    if (syscall == SC_OPEN) {
        a.path = (const char *)r.SYSCALL_ARG1;
        a.flags = r.SYSCALL_ARG2;
        a.mode = r.SYSCALL_ARG3;
    } else {
        a.dirfd = (s32)r.SYSCALL_ARG1;
        a.path = (const char *)r.SYSCALL_ARG2;
        a.flags = r.SYSCALL_ARG3;
        a.mode = r.SYSCALL_ARG4;
    }
    if (syscall == SC_OPENAT2) {
        u64 fm[2] = {};
        bpf_probe_read_user(&fm, sizeof(fm), (const void *)a.flags);
        a.flags = fm[0];
        a.mode = (u32)fm[1];
    }
    if (!flags_wanted(a.flags, c))
        return 0;
    return emit(ctx, id, ret, &a, c);
}
#endif

#ifdef ATTACH_RAW_SYSCALLS
/* raw_syscalls:sys_exit: one program at every syscall's return, instead of an
 * entry/exit pair of syscalls:* tracepoints and a map between them. The user's
 * pt_regs (args[0]) still hold the arguments at exit, so the return value and
 * the arguments are in hand at once; it costs about half as much per open
 * (bench/). NR_* and SYSCALL_NR come from the arch table; compat (32-bit)
 * syscalls are skipped, as the syscalls:* tracepoints skip them. */
static __always_inline int compat_syscall(void)
{
    u32 status = 0;
    void *task = (void *)bpf_get_current_task();
    bpf_probe_read_kernel(&status, sizeof(status), task + TASK_TI_STATUS);
    return (status & TS_COMPAT) != 0;
}

int tp_raw_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
    struct pt_regs *uregs = (struct pt_regs *)ctx->args[0];
    long nr = -1;
    /* every syscall's exit comes here: the number alone decides, cheaply */
    bpf_probe_read_kernel(&nr, sizeof(nr), &uregs->SYSCALL_NR);
    u16 syscall;
    if (nr == NR_OPENAT)
        syscall = SC_OPENAT;
#ifdef NR_OPEN
    else if (nr == NR_OPEN)
        syscall = SC_OPEN;
#endif
    else if (nr == NR_OPENAT2)
        syscall = SC_OPENAT2;
    else
        return 0;
    if (compat_syscall())
        return 0;
    return from_regs(ctx, uregs, syscall, (long)ctx->args[1]);
}
#endif

#ifdef ATTACH_SYSCALL_EXIT
/* syscalls:sys_exit_open* alone: the kernel runs these only at the open syscalls'
 * exits (no program at every other syscall's), and the task's saved registers
 * (bpf_task_pt_regs, 5.15+) give the arguments: one program per open, no map.
 * The syscalls:* tracepoints skip compat (32-bit) syscalls themselves. An exit
 * with no entry is reported too (a seccomp filter that failed the open): the
 * open returned that errno. */
static __always_inline int exit_regs(struct sys_exit_ctx *ctx, u16 syscall)
{
    struct task_struct *task = bpf_get_current_task_btf();
    return from_regs(ctx, (const struct pt_regs *)bpf_task_pt_regs(task), syscall, ctx->ret);
}

int tp_exit_regs_open(struct sys_exit_ctx *ctx) { return exit_regs(ctx, SC_OPEN); }
int tp_exit_regs_openat(struct sys_exit_ctx *ctx) { return exit_regs(ctx, SC_OPENAT); }
int tp_exit_regs_openat2(struct sys_exit_ctx *ctx) { return exit_regs(ctx, SC_OPENAT2); }
#endif

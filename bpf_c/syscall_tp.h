/* Context of the syscalls:sys_enter_* / sys_exit_* tracepoints, as their
 * format files lay it out (tests/host checks these offsets against tracefs). */
#ifndef BPFPROBES_SYSCALL_TP_H
#define BPFPROBES_SYSCALL_TP_H

struct sys_enter_ctx {
    u64 common;         /* common_type, common_flags, common_preempt_count, common_pid */
    s32 nr;
    u32 pad;
    u64 args[6];
};

struct sys_exit_ctx {
    u64 common;
    s32 nr;
    u32 pad;
    s64 ret;
};

#endif

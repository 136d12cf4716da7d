/* bpfprobes count: its table's key (mirrored once in decode.py) and its
 * settings (config.h, mirrored once in runconfig.py). */
#ifndef BPFPROBES_COUNT_H
#define BPFPROBES_COUNT_H

#include "config.h"

/* with --by: a row per (target, pid, comm); without, the table is indexed by target */
struct count_key {
    u32 target;
    u32 pid;
    char comm[16];
};

struct count_config {
    RUN_CONFIG_FIELDS
};
#define CONFIG_STRUCT count_config

#endif

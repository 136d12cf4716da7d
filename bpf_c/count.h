/* bpfprobes count: its settings (config.h, mirrored once in runconfig.py); with
 * --by its table is metrics.h's. */
#ifndef BPFPROBES_COUNT_H
#define BPFPROBES_COUNT_H

#include "config.h"

struct count_config {
    RUN_CONFIG_FIELDS
};
#define CONFIG_STRUCT count_config

#endif

// SPDX-License-Identifier: GPL-2.0
// The slots that open a program's `enum stat_index`, in the order user space's
// `StatSlots::headed` reads them. Include it before declaring the enum (base.h comes after it):
//
//     enum stat_index {
//         STATS_HEAD(STAT_CALLS),    // the events the program counts
//         STAT_RETURNS = 3,
//         ...
//     };
#ifndef BATON_STATS_H
#define BATON_STATS_H

// `events` counted, events BPF had no room for, user stacks that could not be taken.
#define STATS_HEAD(events) events = 0, STAT_LOST_MAP_FULL = 1, STAT_USTACK_FAILED = 2

#endif

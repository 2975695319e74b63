/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layout of the drain benchmark's synthetic probe: the one definition. */
#ifndef JALKI_BENCH_DRAIN_EVENTS_H
#define JALKI_BENCH_DRAIN_EVENTS_H

#include "jalki/common.bpf.h"

/* One traced syscall: only the common header (ts, cgroup, pid, comm). */
struct drain_event {
	struct jalki_event_header hdr;
};
_Static_assert(sizeof(struct drain_event) == 40, "drain_event layout");

#endif /* JALKI_BENCH_DRAIN_EVENTS_H */

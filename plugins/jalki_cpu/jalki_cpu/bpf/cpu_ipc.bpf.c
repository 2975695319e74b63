// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * cpu_ipc: cycles, instructions and stalled cycles per process, counted by
 * the CPU's performance counters while the process's threads were on a CPU,
 * summed over an interval and emitted as one record per process and
 * interval.
 *
 * User space (CpuIpcProbe.prepare) opens one counting perf event per online
 * CPU and counter and puts its fd into the counter's PERF_EVENT_ARRAY at
 * the CPU's index before the programs attach; a slot left empty (a CPU
 * without that event, e.g. no stalled-cycles event on most Intel CPUs) makes
 * bpf_perf_event_read_value() fail and that counter is simply not counted
 * (counted_ns says for how much of the run time each counter measured).
 *
 * On every sched_switch (current == prev, the task leaving the CPU):
 *   1. read every counter of this CPU;
 *   2. prev's run time not yet accounted (see below) and the counters'
 *      deltas since prev was switched in (kept per CPU) are added to
 *      prev's process (tgid) in cpu_ipc_procs; a delta the counter measured
 *      for only part of the time (the PMU multiplexed it with other events:
 *      time_running < time_enabled) is scaled up by enabled / running and
 *      counted in `scaled`;
 *   3. once the process's interval (cpu_ipc_interval_ns) has elapsed, or
 *      when its last thread leaves a CPU for good (exit_state set, no live
 *      threads), the totals are emitted and the process starts a new
 *      interval. The CPU that deletes the entry emits it, so two CPUs
 *      never emit the same interval; an increment another CPU makes to the
 *      entry between the copy and the delete (a few instructions) is lost.
 *   4. the counters are remembered as next's switch-in values.
 * Intervals that ran less than cpu_ipc_min_run_ns are not emitted (too few
 * cycles for a meaningful IPC). What is still accumulating when the session
 * stops is read from cpu_ipc_procs by user space (CpuIpcProbe.final_events).
 * A process whose interval has elapsed is emitted the next time one of its
 * threads leaves a CPU: one that runs without ever being switched out
 * reports when it is.
 *
 * Run time is the scheduler's own, per thread: the run time of the thread
 * leaving the CPU (se.sum_exec_runtime) less what was already accounted for
 * it (kept in task storage, cpu_ipc_threads, with its switch count then).
 * So the process's run time adds up to the CPU time the kernel charged it
 * (what wait4 and /proc/PID/schedstat report: steal time is not run time)
 * even when the tracepoint did not report some of its switches: a slice
 * whose switch-out went unreported is accounted at the thread's next
 * reported switch-out. On tp_btf a thread is known from its first reported
 * switch-in; see leaving_thread() for a thread not known yet.
 *
 * The counters are read at every reported switch. Their deltas since a
 * thread's reported switch-in are its own only when it ran uninterrupted
 * since: its switch count rose by exactly one (this switch-out). Then they
 * are added, having measured the slice's run time (counted_ns); otherwise
 * (its switch-in was not reported, or it left and came back unreported)
 * the slice counts as the probe's drop cause switch_unseen and its counter
 * deltas are not counted, but its run time is (above). On some kernels
 * certain tasks' switch-outs are never reported; a run the kernel skipped
 * under recursion protection is also counted as recursion_miss.
 *
 * The self filter and the tgid filter apply when accumulating; sampling when
 * emitting. The port filter does not apply.
 *
 * Rungs: tp_btf:     tpbtf_sched_switch (tp_btf/sched_switch);
 *        tracepoint: tp_sched_switch (tracepoint/sched/sched_switch).
 */
#include "cpu_ipc.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

JALKI_BTF_EXPORT(cpu_ipc_event);

/* Settings, written by the loader before load (CpuIpcProbe.rodata). */
const volatile __u64 cpu_ipc_interval_ns = 1000000000;
const volatile __u64 cpu_ipc_min_run_ns = 1000000;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, JALKI_RINGBUF_DEFAULT_BYTES);
} events SEC(".maps");

/* One perf event per CPU and counter; libbpf sizes them to the possible CPUs. */
#define JALKI_CPU_PERF_ARRAY(name)                                      \
	struct {                                                        \
		__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);            \
		__uint(key_size, sizeof(__u32));                        \
		__uint(value_size, sizeof(__u32));                      \
	} name SEC(".maps")

JALKI_CPU_PERF_ARRAY(cpu_cycles);
JALKI_CPU_PERF_ARRAY(cpu_instructions);
JALKI_CPU_PERF_ARRAY(cpu_stalled_frontend);
JALKI_CPU_PERF_ARRAY(cpu_stalled_backend);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_ipc_start);
} cpu_ipc_start SEC(".maps");

/* Not preallocated: an entry deleted by one CPU stays readable until the
 * programs running on other CPUs are done with it (RCU), never reused under them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, JALKI_CPU_PROCESS_ENTRIES);
	__type(key, __u32);
	__type(value, struct cpu_ipc_acc);
} cpu_ipc_procs SEC(".maps");

/* Per thread: up to where its run time is accounted. Freed with the task. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cpu_ipc_thread);
} cpu_ipc_threads SEC(".maps");

/* CO-RE flavors: build against the minimal vmlinux.h as well as a full one. */
struct jalki_atomic___jalki {
	int counter;
} __attribute__((preserve_access_index));

struct signal_struct___jalki {
	struct jalki_atomic___jalki live; /* threads that have not entered do_exit */
} __attribute__((preserve_access_index));

struct sched_entity___jalki {
	__u64 sum_exec_runtime;      /* run time of the task so far */
	__u64 prev_sum_exec_runtime; /* sum_exec_runtime when it was last picked to run */
} __attribute__((preserve_access_index));

struct task_struct___jalki {
	int pid;
	int tgid;
	int exit_state;
	unsigned long nvcsw;  /* voluntary context switches (counted before the tracepoint runs) */
	unsigned long nivcsw; /* involuntary ones */
	struct sched_entity___jalki se;
	struct signal_struct___jalki *signal;
} __attribute__((preserve_access_index));

/* sched:sched_switch (classic tracepoint record) */
struct trace_event_raw_sched_switch___jalki {
	char prev_comm[16];
	int prev_pid;
	int prev_prio;
	long prev_state;
	char next_comm[16];
	int next_pid;
	int next_prio;
} __attribute__((preserve_access_index));

/* Read counter `i` of this CPU from `map` into *now; the bit of i when it worked. */
static __always_inline __u32 read_counter(void *map, __u32 i, struct cpu_ipc_start *now)
{
	struct jalki_perf_value value = {};

	if (bpf_perf_event_read_value(map, JALKI_CPU_CURRENT_CPU, (struct bpf_perf_event_value *)&value,
				      sizeof(value)))
		return 0;
	now->counter[i] = value.counter;
	now->enabled[i] = value.enabled;
	now->running[i] = value.running;
	return 1u << i;
}

/* x * num / den without overflowing 64 bits, for num / den < 2^16 and num < 2^47. */
static __always_inline __u64 mul_ratio(__u64 x, __u64 num, __u64 den)
{
	__u64 factor = (num << JALKI_CPU_SCALE_SHIFT) / den;

	return (x >> JALKI_CPU_SCALE_SHIFT) * factor +
	       (((x & ((1ULL << JALKI_CPU_SCALE_SHIFT) - 1)) * factor) >> JALKI_CPU_SCALE_SHIFT);
}

/* Add counter i's delta over one time slice of `run_ns` to acc; true when it was scaled. */
static __always_inline bool add_delta(struct cpu_ipc_acc *acc, const struct cpu_ipc_start *then,
				      const struct cpu_ipc_start *now, __u32 i, __u64 run_ns)
{
	__u64 count, enabled, running;

	if (!(then->valid & now->valid & (1u << i)))
		return false;
	count = now->counter[i] - then->counter[i];
	enabled = now->enabled[i] - then->enabled[i];
	running = now->running[i] - then->running[i];
	if (running == 0) /* multiplexed out for the whole slice: it measured nothing */
		return false;
	if (running >= enabled) {
		__sync_fetch_and_add(&acc->count[i], count);
		__sync_fetch_and_add(&acc->counted_ns[i], run_ns);
		return false;
	}
	__sync_fetch_and_add(&acc->count[i], mul_ratio(count, enabled, running));
	__sync_fetch_and_add(&acc->counted_ns[i], mul_ratio(run_ns, running, enabled));
	return true;
}

/* How far `task`'s run time is accounted, created when missing (then all
 * zero); NULL when no storage can be had (allocation failed, or nested under
 * another storage user on this CPU). */
static __always_inline struct cpu_ipc_thread *thread_of(struct task_struct___jalki *task)
{
	return bpf_task_storage_get(&cpu_ipc_threads, (void *)task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

/* `task`'s run time is accounted up to now. */
static __always_inline void mark_accounted(struct cpu_ipc_thread *thread, struct task_struct___jalki *task)
{
	thread->run_ns = task->se.sum_exec_runtime;
	thread->switches = task->nvcsw + task->nivcsw;
	thread->known = 1;
}

/* How the thread leaving the CPU (current) is accounted at this switch. */
struct leaving {
	__u64 run_ns;   /* its run time not yet accounted */
	__u64 slice_ns; /* of that, the slice the counters since `start` measured; 0: none */
	bool unseen;    /* the counters since `start` are not its own alone (switch_unseen) */
};

/*
 * The run time of the current thread not yet accounted, which this then
 * marks accounted, and how much of it the counters since this CPU's last
 * reported switch (`start`) measured.
 *
 * Run time: its sum_exec_runtime less the one its storage kept. A thread
 * with nothing accounted yet (no storage to be had, or first seen leaving on
 * the tracepoint rung, which cannot reach the thread switched in) counts
 * from its reported switch-in: the scheduler's run time since then where
 * start recorded it (tp_btf), else the time span; when its switch-in was not
 * reported either, the scheduler's run time since it last picked the thread
 * (prev_sum_exec_runtime; less when it re-picked the running task mid-slice,
 * which the scheduler does) at most the time since the CPU's last reported
 * switch (a task of a class that does not keep prev_sum_exec_runtime cannot
 * claim more).
 *
 * Counters: the deltas since `start` belong to this thread alone only if it
 * was switched in there (start->tid) and did not leave and come back
 * unreported since: its switch count then rose by exactly one, this switch
 * (against the count at switch-in where start recorded it, else the one its
 * storage kept, which also counts unreported switch-outs elsewhere: then no
 * deltas, conservatively). Otherwise the slice is unseen.
 */
static __always_inline struct leaving leaving_thread(const struct cpu_ipc_start *start, __u32 tid,
						      __u64 now_ns)
{
	struct task_struct___jalki *task = (void *)bpf_get_current_task_btf();
	struct cpu_ipc_thread *thread = thread_of(task);
	__u64 sum = task->se.sum_exec_runtime, prev = task->se.prev_sum_exec_runtime;
	__u64 switches = task->nvcsw + task->nivcsw, span_ns = now_ns - start->ts_ns;
	bool known = thread && thread->known, sched = start->valid & JALKI_CPU_START_SCHED;
	bool seen = start->tid == tid, one_slice = false;
	struct leaving out = {};
	__u64 slice = 0;

	if (seen && sched) {
		one_slice = switches == start->switches + 1;
		slice = sum > start->run_ns ? sum - start->run_ns : 0;
	} else if (seen && known) {
		one_slice = switches == thread->switches + 1;
		slice = sum > thread->run_ns ? sum - thread->run_ns : 0;
	} else if (seen) {
		one_slice = true; /* first seen, tracepoint rung: its time span */
		slice = span_ns;
	}
	if (known)
		out.run_ns = sum > thread->run_ns ? sum - thread->run_ns : 0;
	else if (seen)
		out.run_ns = slice;
	else
		out.run_ns = sum > prev ? (sum - prev < span_ns ? sum - prev : span_ns) : 0;
	if (one_slice)
		out.slice_ns = slice < out.run_ns ? slice : out.run_ns;
	out.unseen = !one_slice;
	if (thread)
		mark_accounted(thread, task);
	return out;
}

/* The first switch this CPU reports: the current thread's slice began
 * before the session could see it. A thread already known (it ran on
 * another CPU since) adds what it ran since it was last accounted. */
static __always_inline __u64 first_switch_run_ns(void)
{
	struct task_struct___jalki *task = (void *)bpf_get_current_task_btf();
	struct cpu_ipc_thread *thread = thread_of(task);
	__u64 sum = task->se.sum_exec_runtime, ran = 0;

	if (!thread)
		return 0;
	if (thread->known && sum > thread->run_ns)
		ran = sum - thread->run_ns;
	mark_accounted(thread, task);
	return ran;
}

/* The thread switched in (tp_btf rung: `next` is at hand) is accounted from
 * now on when it is not yet: its slices, reported or not, then add up. */
static __always_inline void account_from_switch_in(struct task_struct___jalki *next)
{
	struct cpu_ipc_thread *thread;
	__u32 tgid = next->tgid;

	if (!tgid || jalki_is_self(tgid) || !jalki_pass_tgid_filter(tgid))
		return;
	thread = thread_of(next);
	if (thread && !thread->known)
		mark_accounted(thread, next);
}

/* The current task is the last thread of its process and leaves the CPU for good. */
static __always_inline bool process_gone(void)
{
	struct task_struct___jalki *task = (void *)bpf_get_current_task_btf();

	if (!task->exit_state)
		return false;
	return task->signal->live.counter == 0;
}

static __always_inline void emit(__u32 tgid, const struct cpu_ipc_acc *acc, __u64 now_ns, __u32 reason)
{
	struct cpu_ipc_event *ev;

	if (acc->run_ns < cpu_ipc_min_run_ns)
		return;
	if (jalki_sampled_out())
		return;
	ev = jalki_reserve(sizeof(*ev));
	if (!ev)
		return;
	jalki_fill_header_current(&ev->hdr); /* current is a thread of tgid */
	ev->hdr.ts_ns = now_ns;
	ev->hdr.pid = tgid;
	ev->window_start_ns = acc->window_start_ns;
	ev->run_ns = acc->run_ns;
	__builtin_memcpy(ev->count, acc->count, sizeof(ev->count));
	__builtin_memcpy(ev->counted_ns, acc->counted_ns, sizeof(ev->counted_ns));
	ev->switches = acc->switches;
	ev->scaled = acc->scaled;
	ev->reason = reason;
	ev->_pad = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* prev (the current task, a thread of tgid) ran run_ns not yet accounted,
 * the last slice_ns of it in the slice now ending; `then` is that slice's
 * switch-in on this CPU when it was reported (the counter deltas since then
 * measured slice_ns of run time), else NULL. */
static __always_inline void account(__u32 tgid, __u64 run_ns, __u64 slice_ns,
				    const struct cpu_ipc_start *then, const struct cpu_ipc_start *now)
{
	struct cpu_ipc_acc *acc = bpf_map_lookup_elem(&cpu_ipc_procs, &tgid);
	struct cpu_ipc_acc copy;
	bool gone, scaled;

	if (!acc) {
		struct cpu_ipc_acc fresh = {};

		fresh.window_start_ns = now->ts_ns - run_ns;
		fresh.cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
		bpf_map_update_elem(&cpu_ipc_procs, &tgid, &fresh, BPF_NOEXIST);
		acc = bpf_map_lookup_elem(&cpu_ipc_procs, &tgid);
		if (!acc) {
			jalki_count_drop(JALKI_DROP_TRACKING_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&acc->run_ns, run_ns);
	__sync_fetch_and_add(&acc->switches, 1);
	acc->last_ns = now->ts_ns; /* plain store: of two CPUs at once, either time */
	if (then) {
		scaled = add_delta(acc, then, now, JALKI_CPU_CYCLES, slice_ns);
		scaled |= add_delta(acc, then, now, JALKI_CPU_INSTRUCTIONS, slice_ns);
		scaled |= add_delta(acc, then, now, JALKI_CPU_STALLED_FRONTEND, slice_ns);
		scaled |= add_delta(acc, then, now, JALKI_CPU_STALLED_BACKEND, slice_ns);
		if (scaled)
			__sync_fetch_and_add(&acc->scaled, 1);
	}

	gone = process_gone();
	if (!gone && now->ts_ns - acc->window_start_ns < cpu_ipc_interval_ns)
		return;
	__builtin_memcpy(&copy, acc, sizeof(copy));
	if (bpf_map_delete_elem(&cpu_ipc_procs, &tgid))
		return; /* another CPU emitted this interval */
	emit(tgid, &copy, now->ts_ns, gone ? JALKI_CPU_REASON_EXIT : JALKI_CPU_REASON_INTERVAL);
}

/* `next` is the thread switched in where the rung has it (tp_btf), else NULL. */
static __always_inline int handle_switch(__u32 next_tid, struct task_struct___jalki *next)
{
	__u32 zero = 0;
	struct cpu_ipc_start *start = bpf_map_lookup_elem(&cpu_ipc_start, &zero);
	struct cpu_ipc_start now = {};
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, tgid = pid_tgid >> 32;
	struct leaving out;
	__u64 run_ns;

	if (!start)
		return 0;
	now.valid = read_counter(&cpu_cycles, JALKI_CPU_CYCLES, &now);
	now.valid |= read_counter(&cpu_instructions, JALKI_CPU_INSTRUCTIONS, &now);
	now.valid |= read_counter(&cpu_stalled_frontend, JALKI_CPU_STALLED_FRONTEND, &now);
	now.valid |= read_counter(&cpu_stalled_backend, JALKI_CPU_STALLED_BACKEND, &now);
	now.ts_ns = bpf_ktime_get_ns();

	if (tgid && !jalki_is_self(tgid) && jalki_pass_tgid_filter(tgid)) {
		if (!start->ts_ns) { /* the first switch this CPU reports */
			run_ns = first_switch_run_ns();
			if (run_ns)
				account(tgid, run_ns, 0, NULL, &now);
		} else {
			out = leaving_thread(start, tid, now.ts_ns);
			if (out.unseen)
				jalki_count_drop(JALKI_DROP_PROBE_BASE + JALKI_CPU_DROP_SWITCH_UNSEEN);
			account(tgid, out.run_ns, out.slice_ns, out.slice_ns ? start : NULL, &now);
		}
	} else if (start->ts_ns && start->tid != tid) {
		jalki_count_drop(JALKI_DROP_PROBE_BASE + JALKI_CPU_DROP_SWITCH_UNSEEN);
	}
	now.tid = next_tid;
	if (next) {
		now.run_ns = next->se.sum_exec_runtime;
		now.switches = next->nvcsw + next->nivcsw;
		now.valid |= JALKI_CPU_START_SCHED;
	}
	__builtin_memcpy(start, &now, sizeof(now));
	return 0;
}

/* ---- rung "tp_btf" ---- */

SEC("tp_btf/sched_switch")
int BPF_PROG(tpbtf_sched_switch, bool preempt, struct task_struct___jalki *prev,
	     struct task_struct___jalki *next)
{
	handle_switch(next->pid, next);
	account_from_switch_in(next);
	return 0;
}

/* ---- rung "tracepoint" ---- */

SEC("tracepoint/sched/sched_switch")
int tp_sched_switch(struct trace_event_raw_sched_switch___jalki *ctx)
{
	return handle_switch(ctx->next_pid, NULL);
}

/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Per-endpoint counters (kino_metrics, per CPU: no atomics on the fast path): the endpoint's
 * entry, made on first use; drop() counts a drop by reason, to_stack() a packet passed to
 * the node's stack. A drop is also reported as a flow event: use events.h's drop_*().
 */
#ifndef KINO_LIB_METRICS_H
#define KINO_LIB_METRICS_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"
#include "maps.h"

static __always_inline struct endpoint_metrics *metrics_of(__u32 endpoint_id)
{
	struct endpoint_metrics *m = bpf_map_lookup_elem(&kino_metrics, &endpoint_id);

	if (m)
		return m;
	struct endpoint_metrics zero = {};

	bpf_map_update_elem(&kino_metrics, &endpoint_id, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&kino_metrics, &endpoint_id);
}

static __always_inline int drop(struct endpoint_metrics *m, __u32 reason)
{
	if (m && reason < KINO_DROP_REASONS)
		m->drops[reason]++;
	return TC_ACT_SHOT;
}

static __always_inline int to_stack(struct endpoint_metrics *m)
{
	if (m)
		m->to_stack_packets++;
	return TC_ACT_OK;
}

#endif /* KINO_LIB_METRICS_H */

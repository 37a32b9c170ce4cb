/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Choosing a frontend's backend (issue #14), for any program that translates: session
 * affinity first (the client's last backend while it is active and not idle past the
 * timeout), else the Maglev table (KINO_LB_F_MAGLEV; `hash` picks the slot) or a weighted
 * random slot (a binary search over the cumulative weights: at most
 * KINO_LB_SLOT_SEARCH_STEPS lookups). A chosen backend that is not ACTIVE — the agent is
 * between two writes of a change — is skipped for the next slots. Every step is a hash
 * lookup: the cost does not grow with the number of services.
 */
#ifndef KINO_LIB_LB_H
#define KINO_LIB_LB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"
#include "lb_maps.h"

/* Slots tried after a chosen backend that takes no new connections. */
#define KINO_LB_PROBES 4

static __always_inline __u32 lb_now_seconds(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
}

/* The backend `id` if it is an active backend of `fe`. */
static __always_inline struct lb_backend *lb_active_backend(const struct lb_frontend *fe,
							     __u32 id)
{
	struct lb_backend *backend;

	if (!id)
		return NULL;
	backend = bpf_map_lookup_elem(&kino_lb_backends, &id);
	if (!backend || backend->frontend_id != fe->id ||
	    backend->state != KINO_LB_BACKEND_ACTIVE)
		return NULL;
	return backend;
}

/* The slot (1..count) holding the random weight r < total_weight. */
static __always_inline __u32 lb_weighted_slot(const struct lb_frontend *fe, __u32 r)
{
	struct lb_slot_key key = { .frontend_id = fe->id };
	__u32 lo = 1, hi = fe->count;
	int i;

	for (i = 0; i < KINO_LB_SLOT_SEARCH_STEPS; i++) {
		struct lb_slot *slot;
		__u32 mid;

		if (lo >= hi)
			break;
		mid = lo + (hi - lo) / 2;
		key.slot = mid;
		slot = bpf_map_lookup_elem(&kino_lb_slots, &key);
		if (!slot)
			break;
		if (r < slot->weight_end)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

/* The backend id in slot `idx` of the frontend's Maglev table; 0 when not there. */
static __always_inline __u32 lb_maglev_backend(const struct lb_frontend *fe, __u32 hash)
{
	struct lb_maglev_key key = { .frontend_id = fe->id };
	struct lb_maglev_chunk *chunk;
	__u32 idx, offset;

	if (!fe->maglev_size)
		return 0;
	idx = hash % fe->maglev_size;
	key.chunk = idx / KINO_LB_MAGLEV_CHUNK;
	offset = idx - key.chunk * KINO_LB_MAGLEV_CHUNK;
	/* Opaque to the compiler, so the bound below stays for the verifier. */
	asm volatile("" : "+r"(offset));
	if (offset >= KINO_LB_MAGLEV_CHUNK)
		return 0;
	chunk = bpf_map_lookup_elem(&kino_lb_maglev, &key);
	if (!chunk)
		return 0;
	return chunk->backend_ids[offset];
}

/*
 * The backend for a new connection of `client` (family `family`) to `fe`; its id in
 * *backend_id. NULL when the frontend has no active backend: the connection is refused.
 */
static __always_inline struct lb_backend *lb_select_backend(const struct lb_frontend *fe,
							    const union kino_addr *client,
							    __u8 family, __u32 hash,
							    __u32 *backend_id)
{
	struct lb_affinity_key affinity_key = {};
	struct lb_backend *backend = NULL;
	struct lb_slot_key slot_key = { .frontend_id = fe->id };
	__u32 now = 0, slot = 0, id = 0;
	int i;

	if (!fe->count || !fe->total_weight)
		return NULL;
	if (fe->flags & KINO_LB_F_AFFINITY) {
		struct lb_affinity *last;

		affinity_key.client = *client;
		affinity_key.frontend_id = fe->id;
		affinity_key.family = family;
		now = lb_now_seconds();
		last = bpf_map_lookup_elem(&kino_lb_affinity, &affinity_key);
		if (last && now - last->last_used <= fe->affinity_timeout) {
			id = last->backend_id;
			backend = lb_active_backend(fe, id);
		}
	}
	if (!backend && (fe->flags & KINO_LB_F_MAGLEV)) {
		id = lb_maglev_backend(fe, hash);
		backend = lb_active_backend(fe, id);
	}
	if (!backend) {
		slot = lb_weighted_slot(fe, bpf_get_prandom_u32() % fe->total_weight);
		for (i = 0; i < KINO_LB_PROBES; i++) {
			struct lb_slot *s;

			slot_key.slot = slot;
			s = bpf_map_lookup_elem(&kino_lb_slots, &slot_key);
			if (s) {
				id = s->backend_id;
				backend = lb_active_backend(fe, id);
				if (backend)
					break;
			}
			slot = slot >= fe->count ? 1 : slot + 1;
		}
	}
	if (!backend)
		return NULL;
	if (fe->flags & KINO_LB_F_AFFINITY) {
		struct lb_affinity value = { .backend_id = id, .last_used = now };

		bpf_map_update_elem(&kino_lb_affinity, &affinity_key, &value, BPF_ANY);
	}
	*backend_id = id;
	return backend;
}

#endif /* KINO_LIB_LB_H */

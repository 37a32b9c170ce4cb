/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * The load balancer's pinned maps (issue #14), layouts in kino_maps.h. Pinned by name in
 * the node's pin directory like lib/maps.h's, so any object that includes this header —
 * the socket programs (sock_lb.bpf.c) today, a per-packet translation at tc later — shares
 * the same maps, and a restarted agent adopts them with their entries.
 */
#ifndef KINO_LIB_LB_MAPS_H
#define KINO_LIB_LB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"

/* (VIP, port, protocol) -> frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_LB_MAX_FRONTENDS);
	__type(key, struct lb_frontend_key);
	__type(value, struct lb_frontend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_frontends SEC(".maps");

/* (frontend id, slot) -> active backend with its cumulative weight. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_LB_MAX_SLOTS);
	__type(key, struct lb_slot_key);
	__type(value, struct lb_slot);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_slots SEC(".maps");

/* backend id -> backend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_backends SEC(".maps");

/* (frontend id, chunk) -> Maglev table slots. The agent sizes it to its table size. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_LB_MAX_FRONTENDS);
	__type(key, struct lb_maglev_key);
	__type(value, struct lb_maglev_chunk);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_maglev SEC(".maps");

/* (client, frontend id) -> the backend it last used (session affinity). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KINO_LB_AFFINITY_MAX_ENTRIES);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_affinity SEC(".maps");

/* (socket, backend) -> the frontend it asked for: recvmsg/getpeername show the frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KINO_LB_REVERSE_SK_MAX_ENTRIES);
	__type(key, struct lb_reverse_sk_key);
	__type(value, struct lb_reverse_sk);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_reverse_sk SEC(".maps");

/* frontend id -> frontend address, for per-packet reverse NAT. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_LB_MAX_FRONTENDS);
	__type(key, __u32);
	__type(value, struct lb_revnat);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_revnat SEC(".maps");

/* netns cookie -> this node's pod (or the node itself): whose sockets are translated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_LB_NETNS_MAX_ENTRIES);
	__type(key, __u64);
	__type(value, struct lb_netns);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lb_netns SEC(".maps");

#endif /* KINO_LIB_LB_MAPS_H */

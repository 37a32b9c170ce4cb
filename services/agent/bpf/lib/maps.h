/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * The datapath's pinned maps: every map the agent reads or writes, pinned by name under its
 * pin directory (LIBBPF_PIN_BY_NAME) so a restarted agent adopts them and traffic keeps
 * flowing. The agent opens them by these names; their key and value layouts are the ABI in
 * kino_maps.h.
 */
#ifndef KINO_LIB_MAPS_H
#define KINO_LIB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"

/* IP -> endpoint, for delivery. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_MAX_ENDPOINTS);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_endpoints SEC(".maps");

/* lxc ifindex -> endpoint, to know which endpoint a packet comes from or goes to. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, KINO_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_lxc SEC(".maps");

/* endpoint id -> counters (per CPU: no atomics on the fast path). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, KINO_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint_metrics);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_metrics SEC(".maps");

/* prefix (ipcache_key) -> identity of the peer. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, KINO_IPCACHE_MAX_ENTRIES);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_ipcache SEC(".maps");

/* {endpoint, peer identity, direction, protocol, port prefix} -> verdict (every endpoint). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, KINO_POLICY_MAX_ENTRIES);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_policy SEC(".maps");

/* endpoint id -> enforced directions. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, KINO_MAX_ENDPOINT_ID + 1);
	__type(key, __u32);
	__type(value, struct endpoint_policy);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_ep_policy SEC(".maps");

/* Conntrack: connections seen at each enforcement point. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, KINO_CT_MAX_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_ct SEC(".maps");

/* Flow events (#6) for the agent's flow observer. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KINO_EVENTS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_events SEC(".maps");

/* Events emitted and lost (ring full), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_event_counters SEC(".maps");

/* The node's routing configuration (issue #13), key 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kino_node_config SEC(".maps");

#endif /* KINO_LIB_MAPS_H */

/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Map layouts of the Kinocilium datapath: defined ONCE here and mirrored #[repr(C)] in
 * services/agent/src/datapath/maps.rs, whose test checks every size and offset against the
 * BTF of the compiled object. Change both together; a layout change also needs new pin names
 * (an agent adopting an old pinned map with other key/value sizes refuses to start).
 *
 * Every map is pinned by name under the agent's pin directory /sys/fs/bpf/kino/<node>/, so
 * an agent restart finds the same maps and traffic keeps flowing.
 *
 * Room left for later issues (not defined yet, so nothing is pinned for them):
 *   kino_policy   (#5) per-endpoint policy: {identity, dport, proto, direction} -> verdict
 *   kino_ipcache  (#5) LPM trie: prefix -> {identity, tunnel endpoint}
 *   kino_ct       (#5) LRU hash conntrack
 *   kino_events   (#6) ring buffer of flow events (trace / drop notifications)
 */
#ifndef KINO_MAPS_H
#define KINO_MAPS_H

#include <linux/types.h>

/* Capacity of the per-node maps: endpoints on one node. */
#define KINO_MAX_ENDPOINTS 16384

/* endpoint_key.family */
#define KINO_FAMILY_IPV4 1
#define KINO_FAMILY_IPV6 2

/* endpoint_info.flags */
#define KINO_EP_F_IPV6 (1U << 0) /* ipv6 holds the endpoint's IPv6 address */

/* Key of kino_endpoints: one IP address of a local endpoint. Unused bytes are zero. */
struct endpoint_key {
	union {
		__be32 ip4;     /* family == KINO_FAMILY_IPV4 */
		__u8 ip6[16];   /* family == KINO_FAMILY_IPV6 */
	};
	__u8 family;
	__u8 pad[3];
};

/* Value of kino_endpoints (keyed by IP) and kino_lxc (keyed by the lxc's ifindex). */
struct endpoint_info {
	__u32 ifindex;       /* host side (lxc) ifindex in the node's netns */
	__u32 endpoint_id;   /* the agent's endpoint id; key of kino_metrics */
	__u32 identity;      /* security identity (issue #5); 0 until known */
	__u32 flags;         /* KINO_EP_F_* */
	__be32 ipv4;         /* the endpoint's IPv4 address (its only legal source) */
	__u8 ipv6[16];       /* the endpoint's IPv6 address when KINO_EP_F_IPV6 */
	__u8 mac[6];         /* the pod side (eth0) MAC: destination MAC on delivery */
	__u8 node_mac[6];    /* the lxc's MAC: source MAC on delivery */
};

/* Drop reasons: index into endpoint_metrics.drops. */
#define KINO_DROP_UNKNOWN_ENDPOINT 0 /* packet on an lxc with no kino_lxc entry */
#define KINO_DROP_INVALID_PACKET   1 /* truncated headers */
#define KINO_DROP_SPOOFED_SOURCE   2 /* source address is not the endpoint's own */
#define KINO_DROP_UNSUPPORTED_L3   3 /* neither IPv4, IPv6 nor ARP */
#define KINO_DROP_POLICY_DENIED    4 /* reserved for issue #5 */
#define KINO_DROP_CT_INVALID       5 /* reserved for issue #5 */
#define KINO_DROP_REASONS          8

/*
 * Value of kino_metrics (per-CPU hash keyed by endpoint id; id 0 counts packets on unknown
 * lxcs). "from_container" is traffic the pod sent, "to_container" traffic delivered to it
 * (by local redirect from another pod, or through the stack and the lxc's egress).
 */
struct endpoint_metrics {
	__u64 from_container_packets;
	__u64 from_container_bytes;
	__u64 to_container_packets;
	__u64 to_container_bytes;
	__u64 local_redirect_packets; /* sent by this pod and redirected to a local pod */
	__u64 to_stack_packets;       /* sent by this pod and passed to the node's stack */
	__u64 drops[KINO_DROP_REASONS];
};

#endif /* KINO_MAPS_H */

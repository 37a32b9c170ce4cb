/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Map layouts of the Kinocilium datapath: defined ONCE here and mirrored #[repr(C)] in
 * services/agent/src/datapath/abi/, whose test checks every size and offset against the
 * BTF of the compiled object. Change both together; a layout change also needs new pin names
 * (an agent adopting an old pinned map with other key/value sizes refuses to start).
 *
 * Every map is pinned by name under the agent's pin directory /sys/fs/bpf/kino/<node>/, so
 * an agent restart finds the same maps and traffic keeps flowing.
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
#define KINO_DROP_POLICY_DENIED    4 /* the endpoint's egress policy denied a packet it sent */
#define KINO_DROP_CT_INVALID       5 /* reserved: invalid conntrack state */
#define KINO_DROP_POLICY_DENIED_INGRESS 6 /* its ingress policy denied a packet to it */
/* The overlay (issue #13): from kino_vxlan, counted under endpoint id 0 unless a local
 * endpoint's policy decided. */
#define KINO_DROP_ERROR_RETRIEVING_TUNNEL_KEY 7 /* from the overlay without a readable key */
#define KINO_DROP_UNKNOWN_SENDER   8 /* outer source is not a known node's underlay address */
#define KINO_DROP_INVALID_IDENTITY 9 /* VNI is neither a cluster identity nor remote-node */
#define KINO_DROP_NO_TUNNEL_ENDPOINT 10 /* routed to kino_vxlan, no node hosts the address */
#define KINO_DROP_REASONS          16

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

/* ------------------------------------------------------------------------------------------
 * Policy (issue #5): ipcache, per-endpoint policy, enforcement, conntrack.
 * ------------------------------------------------------------------------------------------ */

/* Capacities. LPM tries allocate per entry, so a large limit costs nothing until used; the
 * conntrack LRU is preallocated. The loader can override them (DatapathOptions). */
#define KINO_POLICY_MAX_ENTRIES  262144 /* policy prefixes of all endpoints of the node */
#define KINO_IPCACHE_MAX_ENTRIES 131072
#define KINO_CT_MAX_ENTRIES      131072
/* Endpoint ids are 1..KINO_MAX_ENDPOINT_ID: the index of kino_ep_policy. */
#define KINO_MAX_ENDPOINT_ID     65535

/* Reserved identities (kino.types.v1.ReservedIdentity). 0 is "unknown": an ipcache entry of
 * a cluster endpoint whose identity is not known yet, and in a policy key the L3 wildcard,
 * so a peer of identity 0 matches only rules that apply to every peer. */
#define KINO_IDENTITY_UNKNOWN     0
#define KINO_IDENTITY_HOST        1
#define KINO_IDENTITY_WORLD       2
#define KINO_IDENTITY_REMOTE_NODE 6

/* Directions, as kino.types.v1.Direction, seen from the endpoint. */
#define KINO_DIR_INGRESS 1
#define KINO_DIR_EGRESS  2

/* Verdicts, as kino.types.v1.PolicyVerdict. */
#define KINO_VERDICT_ALLOW 1
#define KINO_VERDICT_DENY  2

/* An IPv4 (first 4 bytes, network order, the rest zero) or IPv6 address. */
union kino_addr {
	__be32 ip4;
	__u8 ip6[16];
};

/*
 * Key of kino_ipcache (LPM trie): prefix -> identity. prefixlen counts the bits matched after
 * it: family and pad (always all 32) plus the address prefix, i.e. 32 + 0..32 (IPv4) or
 * 32 + 0..128 (IPv6). Bits past the prefix are zero.
 */
struct ipcache_key {
	__u32 prefixlen;
	__u8 family;          /* KINO_FAMILY_* */
	__u8 pad[3];
	union kino_addr addr;
};
#define KINO_IPCACHE_PREFIX_STATIC 32 /* family + pad */

/* ipcache_entry.flags */
#define KINO_IPCACHE_F_TUNNEL_IPV6 (1U << 0) /* tunnel_endpoint is IPv6 */

/* Value of kino_ipcache. */
struct ipcache_entry {
	__u32 identity;       /* security identity of the prefix */
	__u32 flags;          /* KINO_IPCACHE_F_* */
	union kino_addr tunnel_endpoint; /* node hosting the prefix; zero for local/world */
};

/*
 * Key of kino_policy (LPM trie), one trie for every endpoint of the node. Matched bits after
 * prefixlen, in order: endpoint_id, remote_identity, direction (72 bits: always all), then
 * protocol (8), then dport (16, network order, so port ranges are prefixes):
 *   prefixlen 72          ANY protocol (and so every port)
 *   prefixlen 80          this protocol, every port
 *   prefixlen 80 + n      this protocol, ports sharing dport's first n bits (n = 16: one port)
 * A packet is looked up with prefixlen 96; the longest stored prefix wins, i.e. a port range
 * holding the port, else the protocol's every-port entry, else the ANY entry — steps 1-3 of
 * the lookup order of kino.policy.v1.PolicyMapKey in ONE lookup, whatever the number of rules.
 * The datapath does it for the remote identity, then for 0 (every peer): steps 4-6.
 */
struct policy_key {
	__u32 prefixlen;
	__u32 endpoint_id;     /* the local endpoint whose policy this is */
	__u32 remote_identity; /* the peer's identity; 0 = every peer */
	__u8 direction;        /* KINO_DIR_* */
	__u8 protocol;         /* IANA number; 0 (with prefixlen 72) = ANY */
	__be16 dport;          /* destination port (ingress: the endpoint's; egress: the peer's) */
	/* Never matched (past every prefix length used); zero. It makes the key's data 16
	 * bytes, so the trie stores the value 8-byte aligned: the kernel places it right after
	 * the node header (8-byte multiple) and the key data. With 12 bytes of data the value's
	 * u64 counters sat 4 bytes off alignment and, in half the nodes, across a cache line:
	 * every atomic add on them was a split lock (~10 us each here, a VM exit on hosts that
	 * detect split locks), which capped new connections under enforcement at ~8.5k/s. */
	__u8 pad[4];
};
#define KINO_POLICY_PREFIX_ANY_PROTO 72
#define KINO_POLICY_PREFIX_ANY_PORT  80
#define KINO_POLICY_PREFIX_FULL      96

/* Value of kino_policy. */
struct policy_entry {
	__u8 verdict;          /* KINO_VERDICT_*; anything else denies */
	__u8 pad;
	__u16 port;            /* the compiled key's port range [port, end_port] this prefix is */
	__u16 end_port;        /* part of (host order; 0 = single port); for dumps only */
	__u16 pad2;
	__u64 packets;         /* packets that hit this prefix */
	__u64 bytes;
};

/* endpoint_policy.flags: directions in which the endpoint's policy is enforced. */
#define KINO_POLICY_F_INGRESS (1U << 0)
#define KINO_POLICY_F_EGRESS  (1U << 1)

/*
 * Value of kino_ep_policy (array indexed by endpoint id). All zero: nothing enforced.
 * generation changes (alone, in a write of its own) after every change of the endpoint's
 * entries or flags: conntrack entries remember the generation their connection was last
 * allowed under, and skip the policy lookups while it is current.
 */
struct endpoint_policy {
	__u32 flags;           /* KINO_POLICY_F_* */
	__u32 generation;      /* bumped by the agent after each change */
	__s64 revision;        /* policy revision realized; written by the agent, not read here */
};

/*
 * Key of kino_ct (LRU hash): a connection as seen at one enforcement point — the egress of
 * its source endpoint or the ingress of its destination endpoint — in the direction of its
 * first packet. A packet at a point with direction d is ESTABLISHED if {its tuple, d} exists,
 * a REPLY if {its reversed tuple, the other direction} exists (the entry its peer's point
 * made), else NEW. ICMP echo: the identifier is sport of a request, dport of a reply.
 */
struct ct_key {
	union kino_addr saddr;
	union kino_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 family;           /* KINO_FAMILY_* */
	__u8 direction;        /* KINO_DIR_* of the point that made the entry */
	__u8 pad;
};

/* ct_entry.flags */
#define KINO_CT_F_TX_CLOSING   (1U << 0) /* the original side sent FIN or RST */
#define KINO_CT_F_RX_CLOSING   (1U << 1) /* the reply side sent FIN or RST */
#define KINO_CT_F_SEEN_NON_SYN (1U << 2) /* a TCP packet other than a bare SYN was seen */

/* Lifetimes (seconds) after the last packet. */
#define KINO_CT_LIFETIME_TCP    21600 /* established TCP */
#define KINO_CT_LIFETIME_SYN    60    /* TCP before its handshake completes */
#define KINO_CT_LIFETIME_CLOSE  10    /* TCP closing in both directions, or reset */
#define KINO_CT_LIFETIME_NONTCP 60    /* UDP, ICMP, others */

/* Value of kino_ct. */
struct ct_entry {
	__u64 tx_packets;      /* original direction */
	__u64 tx_bytes;
	__u64 rx_packets;      /* reply direction */
	__u64 rx_bytes;
	__u32 expires;         /* CLOCK_MONOTONIC second at which the entry lapses */
	__u32 flags;           /* KINO_CT_F_* */
	__u32 src_identity;    /* identity of the connection's source */
	__u32 endpoint_id;     /* the local endpoint of the point that made the entry */
	/* Verdict cache, written together (one 8-byte store): the connection's non-reply
	 * packets were last allowed at this point under this endpoint_policy.generation with
	 * this peer identity; while both still hold, no policy lookup is needed. */
	__u32 policy_generation;
	__u32 remote_identity;
};

/* ------------------------------------------------------------------------------------------
 * Flow events (issue #6): kino_events, a BPF ring buffer of struct flow_event read by the
 * agent's flow observer, and kino_event_counters (per-CPU: events emitted and events lost
 * because the ring was full). Emitted for every drop and for each new connection allowed
 * at an enforcement point (its policy verdict), never for the other packets of an
 * established connection.
 * ------------------------------------------------------------------------------------------ */

/* Bytes of kino_events (a power of two, a multiple of the page size); the loader can
 * override it (MapCapacities::events). One event takes 104 bytes with the ring's header. */
#define KINO_EVENTS_RING_BYTES 4194304

/* flow_event.type */
#define KINO_EVENT_DROP           1 /* a packet was dropped (drop_reason says why) */
#define KINO_EVENT_POLICY_VERDICT 2 /* a new connection was allowed at an enforcement point */

/* flow_event.verdict */
#define KINO_EVENT_FORWARDED 1
#define KINO_EVENT_DROPPED   2
#define KINO_EVENT_AUDIT     3 /* reserved: policy audit mode (denied but forwarded) */

/* flow_event.obs_point: the program that saw the packet. */
#define KINO_OBS_FROM_ENDPOINT 1 /* from_container: the pod sent it (its lxc's ingress) */
#define KINO_OBS_TO_ENDPOINT   2 /* to_container: the stack delivers it to the pod */

/* flow_event.match_type: which kind of kino_policy entry decided a verdict. */
#define KINO_MATCH_NONE         0 /* no entry: default deny (or no policy decision) */
#define KINO_MATCH_L3_L4        1 /* an entry for the peer's identity and the port/protocol */
#define KINO_MATCH_L3_ONLY      2 /* an entry for the peer's identity, every port */
#define KINO_MATCH_L4_ONLY      3 /* an entry for every peer and the port/protocol */
#define KINO_MATCH_ALL          4 /* an entry for every peer and every port */
#define KINO_MATCH_NOT_ENFORCED 5 /* the direction is not enforced */

/* flow_event.flags */
#define KINO_EVENT_F_SRC_IDENTITY (1U << 0) /* src_identity is the datapath's */
#define KINO_EVENT_F_DST_IDENTITY (1U << 1) /* dst_identity is the datapath's */
#define KINO_EVENT_F_REPLY_KNOWN  (1U << 2) /* conntrack classified the packet */
#define KINO_EVENT_F_REPLY        (1U << 3) /* ... as a reply of a tracked connection */

/*
 * One record of kino_events. The packet's headers (MACs, addresses, ports, TCP flags, ICMP
 * type/code) are read from the packet when the event is emitted, so every observation point
 * reports them the same way; the rest is what the program knew.
 */
struct flow_event {
	__u64 ktime_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;         /* interface the program runs on (the lxc) */
	__u32 endpoint_id;     /* local endpoint of the observation point; 0 = unknown lxc */
	__u32 src_identity;    /* valid with KINO_EVENT_F_SRC_IDENTITY */
	__u32 dst_identity;    /* valid with KINO_EVENT_F_DST_IDENTITY */
	__u32 len;             /* packet length */
	__u16 ethertype;       /* host order; 0 when the Ethernet header is truncated */
	__u8 family;           /* KINO_FAMILY_*; 0 when not IP */
	__u8 protocol;         /* IP protocol (IPv6: the first next header) */
	union kino_addr saddr;
	union kino_addr daddr;
	__be16 sport;          /* TCP/UDP/SCTP ports; 0 otherwise */
	__be16 dport;
	__u8 type;             /* KINO_EVENT_* */
	__u8 verdict;          /* KINO_EVENT_FORWARDED / DROPPED / AUDIT */
	__u8 drop_reason;      /* KINO_DROP_*, for DROPPED */
	__u8 direction;        /* KINO_DIR_* of the endpoint_id's point; 0 = none */
	__u8 obs_point;        /* KINO_OBS_* */
	__u8 match_type;       /* KINO_MATCH_*, for POLICY_VERDICT */
	__u8 tcp_flags;        /* TCP header byte 13 */
	__u8 icmp_type;        /* ICMP / ICMPv6 */
	__u8 icmp_code;
	__u8 flags;            /* KINO_EVENT_F_* */
	__u8 src_mac[6];
	__u8 dst_mac[6];
	__u8 pad[6];
};

/* Value of kino_event_counters (per-CPU array of one element): events submitted to
 * kino_events, and events lost because bpf_ringbuf_reserve failed (the ring was full). */
struct event_counters {
	__u64 emitted;
	__u64 lost;
};

/* ------------------------------------------------------------------------------------------
 * The node (issue #13): how pod traffic crosses nodes. kino_node_config, an array of one
 * element written by the agent at start-up; all zero (not configured yet, or one node)
 * behaves as before: everything that is not for a local pod goes to the stack.
 * ------------------------------------------------------------------------------------------ */

/* node_config.routing_mode, as kino.types.v1.RoutingMode. */
#define KINO_ROUTING_NONE   0 /* not configured: no encapsulation */
#define KINO_ROUTING_TUNNEL 1 /* VXLAN: remote prefixes are encapsulated to their node */
#define KINO_ROUTING_NATIVE 2 /* no encapsulation: the stack routes to other nodes */

/* The smallest cluster identity: a VNI below it is not a pod's (kino.types.v1). */
#define KINO_IDENTITY_CLUSTER_MIN 256
/* TTL of the outer (underlay) header of encapsulated packets. */
#define KINO_TUNNEL_TTL 64

/* Value of kino_node_config (key 0). */
struct node_config {
	__u32 routing_mode;    /* KINO_ROUTING_* */
	__u32 vxlan_ifindex;   /* kino_vxlan (tunnel mode): where encapsulated packets go */
};

#endif /* KINO_MAPS_H */

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

/* ------------------------------------------------------------------------------------------
 * Services (issue #14): load balancing. A frontend (VIP, port, protocol) has an id (the
 * cluster-wide frontend id of kino.service.v1, also the reverse-NAT index), its ACTIVE
 * backends in slots 1..count and, with the Maglev algorithm, a lookup table. Backends are
 * per frontend (a backend id is one backend of one frontend), so a backend entry says which
 * frontend it serves: an affinity entry or a table slot naming a backend of another frontend
 * is never followed. The socket programs (sock_lb.bpf.c) translate at connect/sendmsg; the
 * same maps serve a per-packet (tc) translation through lib/lb.h.
 * ------------------------------------------------------------------------------------------ */

/* Capacities (hash maps without preallocation: an entry costs only while it exists). */
#define KINO_LB_MAX_FRONTENDS  65536  /* frontend ids are 1..65535 */
#define KINO_LB_MAX_BACKENDS   262144 /* backends of all frontends of the node */
#define KINO_LB_MAX_SLOTS      262144 /* active backends of all frontends */
#define KINO_LB_AFFINITY_MAX_ENTRIES 131072 /* (client, frontend) pairs remembered (LRU) */
#define KINO_LB_REVERSE_SK_MAX_ENTRIES 262144 /* translated sockets remembered (LRU) */
#define KINO_LB_NETNS_MAX_ENTRIES 16640 /* KINO_MAX_ENDPOINTS pods + the node + spare */
/* Slots of one kino_lb_maglev value: a table of M slots takes ceil(M / CHUNK) values. 1000
 * makes an element (value + key + the kernel's 48-byte header + 8 of its allocator) 4064
 * bytes: one 4 KiB allocation for a table of up to 1000 slots. */
#define KINO_LB_MAGLEV_CHUNK   1000
/* Binary search steps over a frontend's slots: enough for 65535 backends. */
#define KINO_LB_SLOT_SEARCH_STEPS 17

/* lb_frontend.flags */
#define KINO_LB_F_AFFINITY (1U << 0) /* ClientIP session affinity, affinity_timeout seconds */
#define KINO_LB_F_MAGLEV   (1U << 1) /* choose through the Maglev table (maglev_size slots) */

/* lb_frontend.type, as kino.service.v1.FrontendType */
#define KINO_LB_CLUSTER_IP  1
#define KINO_LB_NODE_PORT   2
#define KINO_LB_EXTERNAL_IP 3

/* lb_backend.state, as kino.service.v1.BackendState */
#define KINO_LB_BACKEND_ACTIVE      1
#define KINO_LB_BACKEND_TERMINATING 2 /* no new connections; kept for those it has */

/* Key of kino_lb_frontends. */
struct lb_frontend_key {
	union kino_addr addr;
	__be16 port;
	__u8 protocol;         /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;           /* KINO_FAMILY_* */
};

/* Value of kino_lb_frontends. */
struct lb_frontend {
	__u32 id;              /* frontend id: slots, table, affinity and reverse NAT are by it */
	__u32 count;           /* active backends: slots 1..count; 0 refuses new connections */
	__u32 total_weight;    /* sum of the active backends' weights (random choice) */
	__u32 affinity_timeout; /* seconds, with KINO_LB_F_AFFINITY */
	__u32 maglev_size;     /* slots of its Maglev table (a prime), with KINO_LB_F_MAGLEV */
	__u16 flags;           /* KINO_LB_F_* */
	__u8 type;             /* KINO_LB_CLUSTER_IP ... */
	__u8 pad;
};

/* Key of kino_lb_slots: the frontend's slot 1..count. */
struct lb_slot_key {
	__u32 frontend_id;
	__u32 slot;
};

/* Value of kino_lb_slots: slots are in order of weight_end, so a random r in
 * [0, total_weight) falls in the first slot whose weight_end exceeds it. */
struct lb_slot {
	__u32 backend_id;
	__u32 weight_end;      /* the cumulative weight of slots 1..this one */
};

/* Value of kino_lb_backends (key: backend id, __u32, never 0). */
struct lb_backend {
	union kino_addr addr;
	__be16 port;
	__u8 protocol;
	__u8 family;           /* KINO_FAMILY_* */
	__u8 state;            /* KINO_LB_BACKEND_* */
	__u8 pad[3];
	__u32 frontend_id;     /* the frontend it is a backend of */
};

/* Key of kino_lb_maglev: one chunk of a frontend's table. */
struct lb_maglev_key {
	__u32 frontend_id;
	__u32 chunk;           /* slot / KINO_LB_MAGLEV_CHUNK */
};

/* Value of kino_lb_maglev: backend ids of slots chunk * CHUNK .. + CHUNK - 1. */
struct lb_maglev_chunk {
	__u32 backend_ids[KINO_LB_MAGLEV_CHUNK];
};

/* Key of kino_lb_affinity: a client of a frontend. The client is the pod's address (its
 * netns's entry in kino_lb_netns); the node's own sockets are one client, address zero. */
struct lb_affinity_key {
	union kino_addr client;
	__u32 frontend_id;
	__u8 family;
	__u8 pad[3];
};

/* Value of kino_lb_affinity. */
struct lb_affinity {
	__u32 backend_id;
	__u32 last_used;       /* CLOCK_MONOTONIC second of the client's last new connection */
};

/* Key of kino_lb_reverse_sk (LRU): a translated socket and the backend it was sent to. */
struct lb_reverse_sk_key {
	__u64 cookie;          /* bpf_get_socket_cookie() */
	union kino_addr addr;  /* the backend */
	__be16 port;
	__u8 family;
	__u8 pad[5];
};

/* Value of kino_lb_reverse_sk: what the socket asked for. recvmsg and getpeername show it. */
struct lb_reverse_sk {
	union kino_addr addr;  /* the frontend */
	__be16 port;
	__u8 family;
	__u8 pad;
	__u32 frontend_id;
};

/* Value of kino_lb_revnat (key: frontend id): the frontend a reply's source is rewritten to
 * by a per-packet translation (tc). */
struct lb_revnat {
	union kino_addr addr;
	__be16 port;
	__u8 protocol;
	__u8 family;
};

/* lb_netns.flags */
#define KINO_LB_NETNS_F_IPV6 (1U << 0) /* ipv6 holds the pod's IPv6 address */
#define KINO_LB_NETNS_F_HOST (1U << 1) /* the node's own network namespace */

/*
 * Value of kino_lb_netns (key: a network namespace cookie, __u64): the namespaces whose
 * sockets this node's socket programs translate — its pods' and its own. On one machine
 * every node's programs run for every socket (one cgroup tree); a socket of a namespace
 * not in this map belongs to another node, or to no node, and is left untouched.
 */
struct lb_netns {
	__u32 endpoint_id;     /* the pod's endpoint id; 0 for the node */
	__u32 identity;        /* the pod's identity (flow events) */
	__u32 flags;           /* KINO_LB_NETNS_F_* */
	__be32 ipv4;           /* the pod's IPv4 address (affinity client, flow events) */
	__u8 ipv6[16];
};

/* flow_event.type of a socket translation; the record is a struct sock_lb_event. */
#define KINO_EVENT_SOCK_LB 3
/* flow_event.obs_point of a socket program. */
#define KINO_OBS_SOCK 3

/* A socket translation (Hubble's sock-LB trace): a flow_event (saddr: the pod, daddr/dport:
 * the frontend, sport 0: not bound yet) followed by the backend chosen. */
struct sock_lb_event {
	struct flow_event flow;
	union kino_addr backend_addr;
	__be16 backend_port;
	__u16 pad;
	__u32 frontend_id;
	__u32 backend_id;
	__u32 pad2;
};

#endif /* KINO_MAPS_H */

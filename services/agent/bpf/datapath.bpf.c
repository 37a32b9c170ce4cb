/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Kinocilium datapath (issues #4, #5): tc programs on every endpoint's lxc (host side veth).
 *
 *   from_container  lxc ingress (packets the pod sends): source check; conntrack and the
 *                   pod's EGRESS policy; local delivery by bpf_redirect_peer to the destination
 *                   pod after conntrack and the destination's INGRESS policy; everything else
 *                   to the stack.
 *   to_container    lxc egress (packets the stack sends toward the pod): conntrack and the
 *                   pod's INGRESS policy; counts.
 *
 * Per packet: hash lookups (endpoint, conntrack), one array lookup (enforcement), at most one
 * ipcache LPM lookup and two policy LPM lookups per enforcement point — nothing walks rules,
 * so the cost is the same with 10 or 100 000 policy entries. IPv4 and IPv6 alike (the v6
 * helpers are the *6 twins of the *4 ones; policy and the conntrack logic are shared), except
 * that IPv6 neighbour discovery is never subject to policy and a pod's neighbour
 * solicitations are answered by the datapath itself (answer_neighbour_solicitation).
 *
 * Layouts of the maps are in kino_maps.h (mirrored in Rust). Flow events (#6): every drop
 * and every new connection an enforcement point allows is reported to the kino_events ring
 * buffer (emit_event; a full ring is counted in kino_event_counters, never silent). Drop
 * with drop_event()/drop_policy() rather than drop() so the drop is reported.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"

char _license[] SEC("license") = "Dual MIT/GPL";

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

/* An Ethernet/IPv4 ARP header (linux/if_arp.h drags in libc headers, so spelled out here). */
struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

/* The body of an Ethernet/IPv4 ARP packet after struct arphdr. */
struct arp_eth_ipv4 {
	__u8 sha[ETH_ALEN];
	__be32 sip;
	__u8 tha[ETH_ALEN];
	__be32 tip;
} __attribute__((packed));

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

/* An IPv6 source a pod may use whatever its address: link-local (ND, MLD) or unspecified (DAD). */
static __always_inline int ipv6_always_allowed_source(const struct in6_addr *a)
{
	if (a->in6_u.u6_addr8[0] == 0xfe && (a->in6_u.u6_addr8[1] & 0xc0) == 0x80)
		return 1;
	return !(a->in6_u.u6_addr32[0] | a->in6_u.u6_addr32[1] | a->in6_u.u6_addr32[2] |
		 a->in6_u.u6_addr32[3]);
}

static __always_inline int ipv6_equal(const struct in6_addr *a, const __u8 *b)
{
	const __u32 *w = (const __u32 *)b;

	return a->in6_u.u6_addr32[0] == w[0] && a->in6_u.u6_addr32[1] == w[1] &&
	       a->in6_u.u6_addr32[2] == w[2] && a->in6_u.u6_addr32[3] == w[3];
}

/* ---- Flows ------------------------------------------------------------------------------ */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define ICMP_ECHO_REPLY   0
#define ICMP_ECHO_REQUEST 8
/* ICMP error messages: they quote (the start of) the packet that caused them. */
#define ICMP_DEST_UNREACH   3
#define ICMP_TIME_EXCEEDED  11
#define ICMP_PARAMETERPROB  12
/* The length of an ICMP(v6) error header before the quoted packet. */
#define ICMP_ERROR_HLEN     8

/* What conntrack and policy need of an IPv4 packet. */
struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;       /* ICMP echo request: identifier */
	__be16 dport;       /* ICMP echo reply: identifier */
	__be16 policy_port; /* the destination port policy matches: dport for TCP/UDP/SCTP, else 0 */
	__u8 protocol;
	__u8 tcp_flags;
	__u16 icmp_quote;   /* ICMP(v6) error: offset of the quoted packet's IP header; else 0 */
	__u32 len;
};

/* Reads the ports (and TCP flags) of a TCP, UDP or SCTP header at `off` into f (whose
 * protocol is set); -1 if it is truncated. Shared by both families. */
static __always_inline int parse_ports(struct __sk_buff *skb, __u32 off, struct flow4 *f)
{
	if (f->protocol == IPPROTO_TCP) {
		__u8 tcp[14];

		if (bpf_skb_load_bytes(skb, off, tcp, sizeof(tcp)) < 0)
			return -1;
		__builtin_memcpy(&f->sport, &tcp[0], 2);
		__builtin_memcpy(&f->dport, &tcp[2], 2);
		f->tcp_flags = tcp[13];
	} else {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		f->sport = ports[0];
		f->dport = ports[1];
	}
	f->policy_port = f->dport;
	return 0;
}

/* Reads the L4 header; -1 if it is truncated. Non-first fragments carry no L4 header: their
 * ports are 0 (only port-wildcard rules match them). */
static __always_inline int parse_flow4(struct __sk_buff *skb, const struct iphdr *ip4,
				       struct flow4 *f)
{
	f->saddr = ip4->saddr;
	f->daddr = ip4->daddr;
	f->protocol = ip4->protocol;
	f->sport = 0;
	f->dport = 0;
	f->policy_port = 0;
	f->tcp_flags = 0;
	f->icmp_quote = 0;
	f->len = skb->len;
	if (ip4->ihl < 5)
		return -1;
	if (ip4->frag_off & bpf_htons(0x1fff))
		return 0;
	__u32 off = ETH_HLEN + ip4->ihl * 4;

	switch (ip4->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		return parse_ports(skb, off, f);
	case IPPROTO_ICMP: {
		__u8 icmp[6]; /* type, code, checksum, identifier */

		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return -1;
		if (icmp[0] == ICMP_ECHO_REQUEST)
			__builtin_memcpy(&f->sport, &icmp[4], 2);
		else if (icmp[0] == ICMP_ECHO_REPLY)
			__builtin_memcpy(&f->dport, &icmp[4], 2);
		else if (icmp[0] == ICMP_DEST_UNREACH || icmp[0] == ICMP_TIME_EXCEEDED ||
			 icmp[0] == ICMP_PARAMETERPROB)
			f->icmp_quote = off + ICMP_ERROR_HLEN;
		return 0;
	}
	default:
		return 0;
	}
}

/* ---- IPv6 -------------------------------------------------------------------------------- */

/* ICMPv6 types (RFC 4443, 4861, 2710, 3810). */
#define ICMPV6_DEST_UNREACH      1
#define ICMPV6_PKT_TOOBIG        2
#define ICMPV6_TIME_EXCEED       3
#define ICMPV6_PARAMPROB         4
#define ICMPV6_ECHO_REQUEST      128
#define ICMPV6_ECHO_REPLY        129
#define ICMPV6_MLD_QUERY         130
#define ICMPV6_MLD_REPORT        131
#define ICMPV6_MLD_DONE          132
#define ICMPV6_ROUTER_SOLICIT    133
#define ICMPV6_ROUTER_ADVERT     134
#define ICMPV6_NEIGHBOUR_SOLICIT 135
#define ICMPV6_NEIGHBOUR_ADVERT  136
#define ICMPV6_REDIRECT          137
#define ICMPV6_MLD2_REPORT       143
/* Extension headers walked to find the L4 header (Cilium's IPV6_MAX_HEADERS); a packet with
 * more is dropped as invalid: it cannot be classified. */
#define IPV6_MAX_EXT_HEADERS 4

/*
 * What conntrack and policy need of an IPv6 packet. `l4` holds everything but the addresses
 * (its saddr/daddr stay 0), so the helpers that read only the ports, protocol, TCP flags and
 * length (ct_account, policy_allows, ...) serve both families.
 */
struct flow6 {
	union kino_addr saddr;
	union kino_addr daddr;
	struct flow4 l4;     /* protocol = the upper-layer header after the extension headers */
	__u32 l4_off;        /* offset of the L4 header in the packet */
	__u8 icmp6_type;     /* when l4.protocol is ICMPv6 (0 is no ICMPv6 type) */
	__u8 icmp6_code;
};

/* from_container's flow6, per CPU: off its stack, which the inlined IPv4 and IPv6 paths share
 * with the emit_event subprogram within the verifier's 512 bytes (tc programs do not nest on
 * a CPU). Internal: not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow6);
} kino_flow6_scratch SEC(".maps");

static __always_inline int ipv6_ext_header(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_AH || nexthdr == IPPROTO_DSTOPTS;
}

/*
 * Reads an IPv6 packet's upper-layer header, walking up to IPV6_MAX_EXT_HEADERS extension
 * headers (hop-by-hop, routing, fragment, AH, destination options); -1 if a header is
 * truncated or there are more. A non-first fragment carries no L4 header: its ports are 0
 * (only port-wildcard rules match it). ICMPv6 echo: the identifier is the request's sport
 * and the reply's dport, as for ICMP.
 */
static __always_inline int parse_flow6(struct __sk_buff *skb, const struct ipv6hdr *ip6,
				       struct flow6 *f)
{
	__u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
	__u8 nexthdr = ip6->nexthdr;

	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memcpy(f->saddr.ip6, &ip6->saddr, sizeof(f->saddr.ip6));
	__builtin_memcpy(f->daddr.ip6, &ip6->daddr, sizeof(f->daddr.ip6));
	f->l4.len = skb->len;
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (!ipv6_ext_header(nexthdr))
			break;
		__u8 ext[4]; /* next header, length, (fragment: offset and flags) */

		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return -1;
		if (nexthdr == IPPROTO_FRAGMENT) {
			if (((ext[2] << 8) | ext[3]) & 0xfff8) {
				/* Not the first fragment: no L4 header here. */
				f->l4.protocol = ext[0];
				return 0;
			}
			off += 8;
		} else if (nexthdr == IPPROTO_AH) {
			off += ((__u32)ext[1] + 2) * 4;
		} else {
			off += ((__u32)ext[1] + 1) * 8;
		}
		nexthdr = ext[0];
	}
	if (ipv6_ext_header(nexthdr))
		return -1;
	f->l4.protocol = nexthdr;
	f->l4_off = off;
	switch (nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		return parse_ports(skb, off, &f->l4);
	case IPPROTO_ICMPV6: {
		__u8 icmp[6]; /* type, code, checksum, identifier */

		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return -1;
		f->icmp6_type = icmp[0];
		f->icmp6_code = icmp[1];
		if (icmp[0] == ICMPV6_ECHO_REQUEST)
			__builtin_memcpy(&f->l4.sport, &icmp[4], 2);
		else if (icmp[0] == ICMPV6_ECHO_REPLY)
			__builtin_memcpy(&f->l4.dport, &icmp[4], 2);
		else if (icmp[0] >= ICMPV6_DEST_UNREACH && icmp[0] <= ICMPV6_PARAMPROB)
			f->l4.icmp_quote = off + ICMP_ERROR_HLEN;
		return 0;
	}
	default:
		return 0;
	}
}

/*
 * Neighbour discovery (RS, RA, NS, NA, redirect) and multicast listener discovery: the
 * ICMPv6 a link needs to work at all. Never subject to policy (as in Cilium) and not
 * tracked; it only ever goes between a pod and its lxc (the stack or the NA responder).
 */
static __always_inline int icmp6_is_neighbour_discovery(const struct flow6 *f)
{
	if (f->l4.protocol != IPPROTO_ICMPV6)
		return 0;
	switch (f->icmp6_type) {
	case ICMPV6_MLD_QUERY:
	case ICMPV6_MLD_REPORT:
	case ICMPV6_MLD_DONE:
	case ICMPV6_ROUTER_SOLICIT:
	case ICMPV6_ROUTER_ADVERT:
	case ICMPV6_NEIGHBOUR_SOLICIT:
	case ICMPV6_NEIGHBOUR_ADVERT:
	case ICMPV6_REDIRECT:
	case ICMPV6_MLD2_REPORT:
		return 1;
	default:
		return 0;
	}
}

/* ---- ipcache ---------------------------------------------------------------------------- */

/* The identity of an IPv4 peer: its longest ipcache prefix; world when none covers it. */
static __always_inline __u32 ipcache_identity4(__be32 addr)
{
	struct ipcache_key key = {};

	key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 32;
	key.family = KINO_FAMILY_IPV4;
	key.addr.ip4 = addr;
	struct ipcache_entry *e = bpf_map_lookup_elem(&kino_ipcache, &key);

	return e ? e->identity : KINO_IDENTITY_WORLD;
}

/* The identity of an IPv6 peer, as ipcache_identity4. */
static __always_inline __u32 ipcache_identity6(const union kino_addr *addr)
{
	struct ipcache_key key = {};

	key.prefixlen = KINO_IPCACHE_PREFIX_STATIC + 128;
	key.family = KINO_FAMILY_IPV6;
	__builtin_memcpy(key.addr.ip6, addr->ip6, sizeof(key.addr.ip6));
	struct ipcache_entry *e = bpf_map_lookup_elem(&kino_ipcache, &key);

	return e ? e->identity : KINO_IDENTITY_WORLD;
}

/* ---- Conntrack ---------------------------------------------------------------------------- */

#define CT_NEW         0
#define CT_ESTABLISHED 1
#define CT_REPLY       2
#define CT_RELATED     3 /* an ICMP(v6) error about a tracked connection's packet */

/* CLOCK_MONOTONIC_COARSE seconds: the tick-updated clock, read without the TSC (every
 * conntrack lookup reads it; the precise clock's rdtsc showed as ~1 % of a TCP_CRR run).
 * Lifetimes are whole seconds, so a tick of lag does not matter. */
static __always_inline __u32 now_seconds(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

static __always_inline __u32 ct_lifetime(__u8 protocol, __u32 flags)
{
	if (protocol != IPPROTO_TCP)
		return KINO_CT_LIFETIME_NONTCP;
	if ((flags & (KINO_CT_F_TX_CLOSING | KINO_CT_F_RX_CLOSING)) ==
	    (KINO_CT_F_TX_CLOSING | KINO_CT_F_RX_CLOSING))
		return KINO_CT_LIFETIME_CLOSE;
	if (!(flags & KINO_CT_F_SEEN_NON_SYN))
		return KINO_CT_LIFETIME_SYN;
	return KINO_CT_LIFETIME_TCP;
}

static __always_inline void ct_key4(struct ct_key *key, const struct flow4 *f, __u8 direction,
				    int reversed)
{
	if (reversed) {
		key->saddr.ip4 = f->daddr;
		key->daddr.ip4 = f->saddr;
		key->sport = f->dport;
		key->dport = f->sport;
	} else {
		key->saddr.ip4 = f->saddr;
		key->daddr.ip4 = f->daddr;
		key->sport = f->sport;
		key->dport = f->dport;
	}
	key->protocol = f->protocol;
	key->family = KINO_FAMILY_IPV4;
	key->direction = direction;
}

/* The TCP flags of a packet as conntrack flags, from the point of view of its side
 * (closing = TX or RX as given). */
static __always_inline __u32 ct_tcp_flags(const struct flow4 *f, __u32 closing)
{
	__u32 flags = 0;

	if (f->protocol != IPPROTO_TCP)
		return 0;
	if (f->tcp_flags & TCP_FLAG_RST)
		flags |= KINO_CT_F_TX_CLOSING | KINO_CT_F_RX_CLOSING;
	else if (f->tcp_flags & TCP_FLAG_FIN)
		flags |= closing;
	if ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		flags |= KINO_CT_F_SEEN_NON_SYN;
	return flags;
}

/* Accounts a packet to an entry: counters, flags, lifetime (written only when they change,
 * so established flows do not bounce the entry's cache line between CPUs more than needed). */
static __always_inline void ct_account(struct ct_entry *e, const struct flow4 *f, int reply,
				       __u32 now)
{
	if (reply) {
		__sync_fetch_and_add(&e->rx_packets, 1);
		__sync_fetch_and_add(&e->rx_bytes, f->len);
	} else {
		__sync_fetch_and_add(&e->tx_packets, 1);
		__sync_fetch_and_add(&e->tx_bytes, f->len);
	}
	__u32 flags = e->flags |
		      ct_tcp_flags(f, reply ? KINO_CT_F_RX_CLOSING : KINO_CT_F_TX_CLOSING);

	if (flags != e->flags)
		e->flags = flags;
	__u32 expires = now + ct_lifetime(f->protocol, flags);

	if (expires != e->expires)
		e->expires = expires;
}

/* A live entry of `key` (not expired), or NULL. */
static __always_inline struct ct_entry *ct_live(struct ct_key *key, __u32 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&kino_ct, key);

	if (e && e->expires >= now)
		return e;
	return NULL;
}

static __always_inline void ct_key6(struct ct_key *key, const struct flow6 *f, __u8 direction)
{
	key->saddr = f->saddr;
	key->daddr = f->daddr;
	key->sport = f->l4.sport;
	key->dport = f->l4.dport;
	key->protocol = f->l4.protocol;
	key->family = KINO_FAMILY_IPV6;
	key->direction = direction;
}

/* The key the peer's point makes for the same connection: tuple reversed, other direction. */
static __always_inline void ct_key_reverse(struct ct_key *key)
{
	union kino_addr addr = key->saddr;
	__be16 port = key->sport;

	key->saddr = key->daddr;
	key->daddr = addr;
	key->sport = key->dport;
	key->dport = port;
	key->direction = key->direction == KINO_DIR_EGRESS ? KINO_DIR_INGRESS : KINO_DIR_EGRESS;
}

/*
 * Classifies a packet whose tuple at a point is `key` (either family; reversed in place to
 * look for the reply entry) and accounts it; *established is the connection's entry for an
 * ESTABLISHED packet. `f` gives the L4 fields. `reply_likely`: the caller expects a reply
 * (the other point of the same packet found one), so the reply entry is looked up first.
 *
 * The order of the two lookups only saves hash lookups (misses cost as much as hits): a
 * SYN-ACK is a reply, so its reply entry is looked up first; a bare SYN opens a connection,
 * so it is never taken as a reply (a SYN that would match a reply entry is a simultaneous
 * open: it goes through the policy as new).
 */
static __always_inline int ct_classify(struct ct_key *key, const struct flow4 *f,
				       struct ct_entry **established, int reply_likely)
{
	__u32 now = now_seconds();
	__u8 syn_ack = 0;
	struct ct_entry *e;

	if (f->protocol == IPPROTO_TCP)
		syn_ack = f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK);
	int syn = syn_ack == TCP_FLAG_SYN;

	if (reply_likely || syn_ack == (TCP_FLAG_SYN | TCP_FLAG_ACK)) {
		ct_key_reverse(key);
		e = ct_live(key, now);
		if (e) {
			ct_account(e, f, 1, now);
			return CT_REPLY;
		}
		ct_key_reverse(key);
	}
	e = ct_live(key, now);
	if (e) {
		/* A SYN on a closing (FIN or RST seen) connection opens a new one on its tuple. */
		if (syn && (e->flags & (KINO_CT_F_TX_CLOSING | KINO_CT_F_RX_CLOSING)))
			return CT_NEW;
		ct_account(e, f, 0, now);
		*established = e;
		return CT_ESTABLISHED;
	}
	if (reply_likely || syn || syn_ack == (TCP_FLAG_SYN | TCP_FLAG_ACK))
		return CT_NEW; /* a bare SYN, or the reply entry was looked up first */
	ct_key_reverse(key);
	e = ct_live(key, now);
	if (e) {
		ct_account(e, f, 1, now);
		return CT_REPLY;
	}
	return CT_NEW;
}

/* Classifies a packet at an enforcement point of direction `direction` and accounts it;
 * *established is the connection's entry for an ESTABLISHED packet. */
static __always_inline int ct_lookup4(const struct flow4 *f, __u8 direction,
				      struct ct_entry **established, int reply_likely)
{
	struct ct_key key = {};

	ct_key4(&key, f, direction, 0);
	return ct_classify(&key, f, established, reply_likely);
}

/* ct_lookup4 for IPv6. */
static __always_inline int ct_lookup6(const struct flow6 *f, __u8 direction,
				      struct ct_entry **established, int reply_likely)
{
	struct ct_key key = {};

	ct_key6(&key, f, direction);
	return ct_classify(&key, &f->l4, established, reply_likely);
}

/* The verdict cache of an entry as one 8-byte value (generation low, identity high). */
static __always_inline __u64 ct_policy_cache(__u32 generation, __u32 remote)
{
	return ((__u64)remote << 32) | generation;
}

/* An enforcement point's outcome: conntrack status, and what the verdict was based on. */
struct point {
	int ct;              /* CT_NEW / CT_ESTABLISHED / CT_REPLY / CT_RELATED */
	__u32 generation;    /* the endpoint's policy generation, read before the lookup */
	__u32 remote;        /* the peer's identity */
	__u8 match;          /* KINO_MATCH_*: which kind of entry decided (flow events) */
};

/* Records a new connection allowed at a point, under `key` (either family). */
static __always_inline void ct_insert(const struct ct_key *key, const struct flow4 *f,
				      __u32 src_identity, __u32 endpoint_id,
				      const struct point *pt)
{
	struct ct_entry e = {};

	/* An ICMP(v6) error is not a connection: tracking it would let any non-echo ICMP back
	 * through as its reply. */
	if (f->icmp_quote)
		return;
	e.tx_packets = 1;
	e.tx_bytes = f->len;
	e.flags = ct_tcp_flags(f, KINO_CT_F_TX_CLOSING);
	e.expires = now_seconds() + ct_lifetime(f->protocol, e.flags);
	e.src_identity = src_identity;
	e.endpoint_id = endpoint_id;
	e.policy_generation = pt->generation;
	e.remote_identity = pt->remote;
	bpf_map_update_elem(&kino_ct, key, &e, BPF_ANY);
}

/* Records a new connection allowed at a point. */
static __always_inline void ct_create4(const struct flow4 *f, __u8 direction,
				       __u32 src_identity, __u32 endpoint_id,
				       const struct point *pt)
{
	struct ct_key key = {};

	ct_key4(&key, f, direction, 0);
	ct_insert(&key, f, src_identity, endpoint_id, pt);
}

/* ct_create4 for IPv6. */
static __always_inline void ct_create6(const struct flow6 *f, __u8 direction,
				       __u32 src_identity, __u32 endpoint_id,
				       const struct point *pt)
{
	struct ct_key key = {};

	ct_key6(&key, f, direction);
	ct_insert(&key, &f->l4, src_identity, endpoint_id, pt);
}

/* ---- Policy -------------------------------------------------------------------------------- */

static __always_inline void policy_account(struct policy_entry *e, __u32 len)
{
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);
}

/* The KINO_MATCH_* of an entry found for the peer (peer = 1) or for every peer: an entry
 * with a port (range) is L4, one for every port of a protocol or ANY is not. */
static __always_inline __u8 policy_match(const struct policy_entry *e, int peer)
{
	if (e->port)
		return peer ? KINO_MATCH_L3_L4 : KINO_MATCH_L4_ONLY;
	return peer ? KINO_MATCH_L3_ONLY : KINO_MATCH_ALL;
}

/*
 * The verdict of endpoint `endpoint_id`'s policy in `direction` for a peer of identity
 * `remote`: one LPM lookup for the peer's identity and one for every peer (0); a DENY in
 * either wins, then an ALLOW in either, else default deny. For the compiler's entries (which
 * fold wildcard denies into every more specific entry) this is exactly the first-hit order of
 * kino.policy.v1.PolicyMapKey. 1 = allowed.
 */
static __always_inline int policy_allows(__u32 endpoint_id, __u8 direction, __u32 remote,
					 const struct flow4 *f, __u8 *match)
{
	struct policy_key key = {};

	key.prefixlen = KINO_POLICY_PREFIX_FULL;
	key.endpoint_id = endpoint_id;
	key.remote_identity = remote;
	key.direction = direction;
	key.protocol = f->protocol;
	key.dport = f->policy_port;
	struct policy_entry *peer = bpf_map_lookup_elem(&kino_policy, &key);

	if (peer && peer->verdict != KINO_VERDICT_ALLOW) {
		policy_account(peer, f->len);
		*match = policy_match(peer, 1);
		return 0;
	}
	struct policy_entry *any = NULL;

	if (remote != KINO_IDENTITY_UNKNOWN) {
		key.remote_identity = KINO_IDENTITY_UNKNOWN;
		any = bpf_map_lookup_elem(&kino_policy, &key);
		if (any && any->verdict != KINO_VERDICT_ALLOW) {
			policy_account(any, f->len);
			*match = policy_match(any, 0);
			return 0;
		}
	}
	if (peer) {
		policy_account(peer, f->len);
		*match = policy_match(peer, 1);
		return 1;
	}
	if (any) {
		policy_account(any, f->len);
		*match = policy_match(any, 0);
		return 1;
	}
	*match = KINO_MATCH_NONE;
	return 0;
}

/*
 * Whether endpoint `endpoint_id` lets a TCP connection in `direction` with a peer of identity
 * `remote` to destination port `port` (network order) through: its direction not enforced, or the policy allowing
 * it (a DENY for the peer or for every peer wins, as in policy_allows). No hit counters:
 * nothing is decided by an entry here, only whether the connection a packet answers was
 * allowed. A subprogram, so its key stays off the callers' stacks.
 */
static __noinline int tcp_connection_allowed(__u32 endpoint_id, __u32 direction, __u32 remote,
					     __u32 port)
{
	struct endpoint_policy *p = bpf_map_lookup_elem(&kino_ep_policy, &endpoint_id);
	__u32 enforced = direction == KINO_DIR_INGRESS ? KINO_POLICY_F_INGRESS
						      : KINO_POLICY_F_EGRESS;

	if (!p || !(p->flags & enforced))
		return 1;
	struct policy_key key = {};

	key.prefixlen = KINO_POLICY_PREFIX_FULL;
	key.endpoint_id = endpoint_id;
	key.remote_identity = remote;
	key.direction = direction;
	key.protocol = IPPROTO_TCP;
	key.dport = port;
	struct policy_entry *peer = bpf_map_lookup_elem(&kino_policy, &key);
	/* Verdicts as scalars: the verifier refuses arithmetic on the entry pointers. */
	__u8 peer_verdict = 0;

	if (peer)
		peer_verdict = peer->verdict;
	if (peer_verdict && peer_verdict != KINO_VERDICT_ALLOW)
		return 0;
	if (remote != KINO_IDENTITY_UNKNOWN) {
		key.remote_identity = KINO_IDENTITY_UNKNOWN;
		struct policy_entry *any = bpf_map_lookup_elem(&kino_policy, &key);
		__u8 any_verdict = 0;

		if (any)
			any_verdict = any->verdict;
		if (any_verdict && any_verdict != KINO_VERDICT_ALLOW)
			return 0;
		if (any_verdict == KINO_VERDICT_ALLOW)
			return 1;
	}
	return peer_verdict == KINO_VERDICT_ALLOW;
}

/*
 * A TCP segment that is not a connection's first (ACK set: it answers something) and that
 * found no conntrack entry at a point whose policy denies it as new: is it a reply of a
 * connection this endpoint's policy allows the other way? The entry the connection's
 * first packet made can be gone while the connection lives — the conntrack LRU evicts
 * when full, and under connection churn the kernel's approximate LRU can pick an entry
 * microseconds old — and a reply of an allowed connection must never be dropped for that.
 * The connection it answers runs the other way at this same endpoint: peer → endpoint:sport
 * for a packet leaving it, endpoint → peer:sport for one arriving. Only TCP and only with
 * ACK: a bare SYN (a new connection) never gets here, and a stray segment that passes
 * opens nothing (the receiving kernel answers it with a reset), so a peer gains no way in;
 * a UDP datagram or ICMP echo reply could start an exchange, and is left to its entry.
 */
static __always_inline int tcp_reply_allowed(__u32 endpoint_id, __u8 direction, __u32 remote,
					     const struct flow4 *f)
{
	if (f->protocol != IPPROTO_TCP || !(f->tcp_flags & TCP_FLAG_ACK))
		return 0;
	__u32 reverse = direction == KINO_DIR_INGRESS ? KINO_DIR_EGRESS : KINO_DIR_INGRESS;

	return tcp_connection_allowed(endpoint_id, reverse, remote, f->sport);
}

/*
 * One enforcement point: the egress of the packet's source endpoint or the ingress of its
 * destination endpoint `ep`, the peer having identity `remote`. Replies of tracked
 * connections pass. Everything else passes only if the direction is not enforced or the
 * policy allows it — established connections too, so a policy change applies to running
 * connections at once; but an established connection already allowed under the endpoint's
 * current policy generation, with the same peer identity, skips the lookups (the cache in its
 * conntrack entry). Returns 1 if the packet may pass; *pt tells the caller whether to record
 * the connection, and with what. Called with pt->ct set and `e` the entry of an ESTABLISHED
 * packet (enforce4, enforce6); `f` gives the L4 fields.
 */
static __always_inline int enforce_point(const struct endpoint_info *ep, __u8 direction,
					 __u32 remote, const struct flow4 *f, struct ct_entry *e,
					 struct point *pt)
{
	pt->remote = remote;
	pt->generation = 0;
	pt->match = KINO_MATCH_NONE;
	if (pt->ct == CT_REPLY || pt->ct == CT_RELATED)
		return 1;
	__u32 id = ep->endpoint_id;
	struct endpoint_policy *p = bpf_map_lookup_elem(&kino_ep_policy, &id);
	__u32 flags = 0;

	if (p) {
		/* The generation first: the agent bumps it (alone) after writing flags and
		 * entries, so a verdict computed after reading generation G reflects at least
		 * the state G stands for. Loads are not reordered on x86 (TSO). */
		pt->generation = *(volatile __u32 *)&p->generation;
		asm volatile("" ::: "memory");
		flags = *(volatile __u32 *)&p->flags;
	}
	__u64 cache = ct_policy_cache(pt->generation, remote);

	if (e && *(volatile __u64 *)&e->policy_generation == cache)
		return 1;
	__u32 enforced = flags & (direction == KINO_DIR_INGRESS ? KINO_POLICY_F_INGRESS
								 : KINO_POLICY_F_EGRESS);

	if (!enforced) {
		pt->match = KINO_MATCH_NOT_ENFORCED;
	} else if (!policy_allows(id, direction, remote, f, &pt->match)) {
		/* Passed as the reply it is (nothing recorded for it). */
		if (pt->ct == CT_NEW && tcp_reply_allowed(id, direction, remote, f)) {
			pt->ct = CT_REPLY;
			return 1;
		}
		return 0;
	}
	if (e)
		*(volatile __u64 *)&e->policy_generation = cache;
	return 1;
}

/*
 * Whether the quoted packet of an ICMP error (its header at `off`) is one of a tracked
 * connection's. The quoted packet went the other way through this endpoint: it was seen at
 * its point of the opposite direction, either as the connection's original direction (the
 * quoted tuple as it is) or as a reply (the tuple reversed, under this direction) — the two
 * lookups ct_classify makes. The ports (ICMP echo identifier) are read as parse_flow4 /
 * parse_flow6 read them. Subprograms, so their frames do not add to the callers' stacks.
 */
static __always_inline int ct_related(struct ct_key *key)
{
	__u32 now = now_seconds();

	if (ct_live(key, now))
		return 1;
	ct_key_reverse(key);
	return ct_live(key, now) != NULL;
}

/* The ports of a quoted packet's L4 header at `off` into the key; -1 if truncated. */
static __always_inline int quoted_ports(struct __sk_buff *skb, __u32 off, __u8 protocol,
					__u8 echo_request, __u8 echo_reply, struct ct_key *key)
{
	__u8 l4[6]; /* TCP/UDP/SCTP: ports; ICMP(v6): type, code, checksum, identifier */

	if (bpf_skb_load_bytes(skb, off, l4, sizeof(l4)) < 0)
		return -1;
	if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP) {
		__builtin_memcpy(&key->sport, &l4[0], 2);
		__builtin_memcpy(&key->dport, &l4[2], 2);
	} else if (l4[0] == echo_request) {
		__builtin_memcpy(&key->sport, &l4[4], 2);
	} else if (l4[0] == echo_reply) {
		__builtin_memcpy(&key->dport, &l4[4], 2);
	}
	return 0;
}

static __noinline int ct_related4(struct __sk_buff *skb, __u32 off, __u32 direction)
{
	struct iphdr ip;
	struct ct_key key = {};

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return 0;
	key.saddr.ip4 = ip.saddr;
	key.daddr.ip4 = ip.daddr;
	key.protocol = ip.protocol;
	key.family = KINO_FAMILY_IPV4;
	key.direction = direction == KINO_DIR_EGRESS ? KINO_DIR_INGRESS : KINO_DIR_EGRESS;
	if (!(ip.frag_off & bpf_htons(0x1fff)) &&
	    quoted_ports(skb, off + ip.ihl * 4, ip.protocol, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY,
			 &key) < 0)
		return 0;
	return ct_related(&key);
}

/* ct_related4 for IPv6; a quoted packet with extension headers is not matched. */
static __noinline int ct_related6(struct __sk_buff *skb, __u32 off, __u32 direction)
{
	struct ipv6hdr ip;
	struct ct_key key = {};

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ipv6_ext_header(ip.nexthdr))
		return 0;
	__builtin_memcpy(key.saddr.ip6, &ip.saddr, sizeof(key.saddr.ip6));
	__builtin_memcpy(key.daddr.ip6, &ip.daddr, sizeof(key.daddr.ip6));
	key.protocol = ip.nexthdr;
	key.family = KINO_FAMILY_IPV6;
	key.direction = direction == KINO_DIR_EGRESS ? KINO_DIR_INGRESS : KINO_DIR_EGRESS;
	if (quoted_ports(skb, off + sizeof(ip), ip.nexthdr, ICMPV6_ECHO_REQUEST,
			 ICMPV6_ECHO_REPLY, &key) < 0)
		return 0;
	return ct_related(&key);
}

/* enforce_point for an IPv4 packet. An ICMP error about a tracked connection is RELATED:
 * it passes as a reply does (path MTU discovery, unreachable ports); any other is a new
 * ICMP packet for the policy. */
static __always_inline int enforce4(struct __sk_buff *skb, const struct endpoint_info *ep,
				    __u8 direction, __u32 remote, const struct flow4 *f,
				    struct point *pt, int reply_likely)
{
	struct ct_entry *e = NULL;

	if (f->icmp_quote && ct_related4(skb, f->icmp_quote, direction))
		pt->ct = CT_RELATED;
	else
		pt->ct = ct_lookup4(f, direction, &e, reply_likely);
	return enforce_point(ep, direction, remote, f, e, pt);
}

/* enforce_point for an IPv6 packet: the same policy map (it is keyed by identity, protocol
 * and port, not by address), IPv6 conntrack keys; ICMPv6 errors as in enforce4. */
static __always_inline int enforce6(struct __sk_buff *skb, const struct endpoint_info *ep,
				    __u8 direction, __u32 remote, const struct flow6 *f,
				    struct point *pt, int reply_likely)
{
	struct ct_entry *e = NULL;

	if (f->l4.icmp_quote && ct_related6(skb, f->l4.icmp_quote, direction))
		pt->ct = CT_RELATED;
	else
		pt->ct = ct_lookup6(f, direction, &e, reply_likely);
	return enforce_point(ep, direction, remote, &f->l4, e, pt);
}

/* ---- Flow events (#6) ---------------------------------------------------------------------- */

/* Reads the packet's Ethernet, IP and L4 headers into an event (best effort: what is
 * truncated stays zero; IPv6 extension headers are not walked). */
static __always_inline void event_headers(struct __sk_buff *skb, struct flow_event *ev)
{
	struct ethhdr eth;
	__u32 l4;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return;
	__builtin_memcpy(ev->src_mac, eth.h_source, ETH_ALEN);
	__builtin_memcpy(ev->dst_mac, eth.h_dest, ETH_ALEN);
	ev->ethertype = bpf_ntohs(eth.h_proto);
	if (eth.h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip4;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip4, sizeof(ip4)) < 0)
			return;
		ev->family = KINO_FAMILY_IPV4;
		ev->protocol = ip4.protocol;
		ev->saddr.ip4 = ip4.saddr;
		ev->daddr.ip4 = ip4.daddr;
		if (ip4.ihl < 5 || (ip4.frag_off & bpf_htons(0x1fff)))
			return;
		l4 = ETH_HLEN + ip4.ihl * 4;
	} else if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return;
		ev->family = KINO_FAMILY_IPV6;
		ev->protocol = ip6.nexthdr;
		__builtin_memcpy(ev->saddr.ip6, &ip6.saddr, sizeof(ev->saddr.ip6));
		__builtin_memcpy(ev->daddr.ip6, &ip6.daddr, sizeof(ev->daddr.ip6));
		l4 = ETH_HLEN + sizeof(ip6);
	} else {
		return;
	}
	switch (ev->protocol) {
	case IPPROTO_TCP: {
		__u8 tcp[14];

		if (bpf_skb_load_bytes(skb, l4, tcp, sizeof(tcp)) < 0)
			return;
		__builtin_memcpy(&ev->sport, &tcp[0], 2);
		__builtin_memcpy(&ev->dport, &tcp[2], 2);
		ev->tcp_flags = tcp[13];
		return;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return;
		ev->sport = ports[0];
		ev->dport = ports[1];
		return;
	}
	case IPPROTO_ICMP:
	case 58: /* IPPROTO_ICMPV6 */ {
		__u8 icmp[2];

		if (bpf_skb_load_bytes(skb, l4, icmp, sizeof(icmp)) < 0)
			return;
		ev->icmp_type = icmp[0];
		ev->icmp_code = icmp[1];
		return;
	}
	default:
		return;
	}
}

/*
 * Reports an event to kino_events: what the program knows (`known`: endpoint, identities,
 * type, verdict, reason, direction, point, match, flags) plus the packet's headers. A full
 * ring is counted in kino_event_counters.lost (per CPU), so the agent can report every lost
 * event. A subprogram rather than inlined: it is called from a dozen places and its code
 * exists once (its prototype also puts struct flow_event into the object's BTF).
 */
static __noinline int emit_event(struct __sk_buff *skb, const struct flow_event *known)
{
	__u32 zero = 0;
	struct event_counters *counters = bpf_map_lookup_elem(&kino_event_counters, &zero);
	struct flow_event *ev = bpf_ringbuf_reserve(&kino_events, sizeof(*ev), 0);

	if (!ev) {
		if (counters)
			counters->lost++;
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->ifindex = skb->ifindex;
	ev->len = skb->len;
	ev->endpoint_id = known->endpoint_id;
	ev->src_identity = known->src_identity;
	ev->dst_identity = known->dst_identity;
	ev->type = known->type;
	ev->verdict = known->verdict;
	ev->drop_reason = known->drop_reason;
	ev->direction = known->direction;
	ev->obs_point = known->obs_point;
	ev->match_type = known->match_type;
	ev->flags = known->flags;
	event_headers(skb, ev);
	/* No wakeup per event: each one is an IPI to the reader's CPU (a VM exit here, a
	 * quarter of a CPU at 10k conn/s). The agent drains the ring on a short timer; only a
	 * ring filling up (an eighth of it pending) wakes it at once. */
	__u64 pending = bpf_ringbuf_query(&kino_events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&kino_events, BPF_RB_RING_SIZE);
	bpf_ringbuf_submit(ev, pending >= size / 8 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	if (counters)
		counters->emitted++;
	return 1;
}

/* Drops a packet, counting it and reporting a DROP event: `endpoint_id`'s point of
 * `direction` (0: none) saw it at `point`; identities as far as known (`flags`). */
static __always_inline int drop_event(struct __sk_buff *skb, struct endpoint_metrics *m,
				      __u32 reason, __u32 endpoint_id, __u8 direction,
				      __u8 point, __u32 src_identity, __u32 dst_identity,
				      __u8 flags)
{
	struct flow_event known = {
		.endpoint_id = endpoint_id,
		.src_identity = src_identity,
		.dst_identity = dst_identity,
		.type = KINO_EVENT_DROP,
		.verdict = KINO_EVENT_DROPPED,
		.drop_reason = reason,
		.direction = direction,
		.obs_point = point,
		.flags = flags,
	};

	emit_event(skb, &known);
	return drop(m, reason);
}

/* Drops a packet endpoint `ep` sent, before any policy decision (source check, parsing). */
static __always_inline int drop_sent(struct __sk_buff *skb, struct endpoint_metrics *m,
				     const struct endpoint_info *ep, __u32 reason)
{
	return drop_event(skb, m, reason, ep->endpoint_id, KINO_DIR_EGRESS,
			  KINO_OBS_FROM_ENDPOINT, ep->identity, 0, KINO_EVENT_F_SRC_IDENTITY);
}

/* Drops a packet `ep`'s policy denied in `direction` (the peer being pt->remote). */
static __always_inline int drop_policy(struct __sk_buff *skb, struct endpoint_metrics *m,
				       __u32 reason, const struct endpoint_info *ep,
				       __u8 direction, __u8 point, const struct point *pt)
{
	struct flow_event known = {
		.endpoint_id = ep->endpoint_id,
		.src_identity = direction == KINO_DIR_EGRESS ? ep->identity : pt->remote,
		.dst_identity = direction == KINO_DIR_EGRESS ? pt->remote : ep->identity,
		.type = KINO_EVENT_DROP,
		.verdict = KINO_EVENT_DROPPED,
		.drop_reason = reason,
		.direction = direction,
		.obs_point = point,
		.match_type = pt->match,
		/* Replies pass without policy: a denied packet is never one. */
		.flags = KINO_EVENT_F_SRC_IDENTITY | KINO_EVENT_F_DST_IDENTITY |
			 KINO_EVENT_F_REPLY_KNOWN,
	};

	emit_event(skb, &known);
	return drop(m, reason);
}

/* Reports the policy verdict of a new connection `ep`'s point of `direction` allowed. */
static __always_inline void verdict_event(struct __sk_buff *skb, const struct endpoint_info *ep,
					  __u8 direction, __u8 point, const struct point *pt)
{
	struct flow_event known = {
		.endpoint_id = ep->endpoint_id,
		.src_identity = direction == KINO_DIR_EGRESS ? ep->identity : pt->remote,
		.dst_identity = direction == KINO_DIR_EGRESS ? pt->remote : ep->identity,
		.type = KINO_EVENT_POLICY_VERDICT,
		.verdict = KINO_EVENT_FORWARDED,
		.direction = direction,
		.obs_point = point,
		.match_type = pt->match,
		.flags = KINO_EVENT_F_SRC_IDENTITY | KINO_EVENT_F_DST_IDENTITY |
			 KINO_EVENT_F_REPLY_KNOWN,
	};

	emit_event(skb, &known);
}

/* The end of a local delivery, both families: the L2 header the destination pod expects
 * (its MAC, from its lxc's), counters, and straight into the destination pod's netns —
 * skipping the node's stack and the lxc egress. */
static __always_inline int redirect_to_pod(struct __sk_buff *skb, struct ethhdr *eth,
					   const struct endpoint_info *dst,
					   struct endpoint_metrics *src_metrics,
					   struct endpoint_metrics *dst_metrics)
{
	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, dst->node_mac, ETH_ALEN);
	if (dst_metrics) {
		dst_metrics->to_container_packets++;
		dst_metrics->to_container_bytes += skb->len;
	}
	if (src_metrics)
		src_metrics->local_redirect_packets++;
	return bpf_redirect_peer(dst->ifindex, 0);
}

/*
 * Delivers an IPv4 packet to a pod on this node after the source's egress and the
 * destination's ingress policy; returns -1 when the destination is not a local pod. Both
 * identities are known from the endpoint entries, so no ipcache lookup is needed.
 */
static __always_inline int deliver_local_ipv4(struct __sk_buff *skb, struct ethhdr *eth,
					      const struct flow4 *f, const struct endpoint_info *src,
					      struct endpoint_metrics *src_metrics)
{
	struct endpoint_key key = {};

	key.ip4 = f->daddr;
	key.family = KINO_FAMILY_IPV4;
	struct endpoint_info *dst = bpf_map_lookup_elem(&kino_endpoints, &key);

	if (!dst || dst->ifindex == src->ifindex)
		return -1;
	struct point egress, ingress;

	if (!enforce4(skb, src, KINO_DIR_EGRESS, dst->identity, f, &egress, 0))
		return drop_policy(skb, src_metrics, KINO_DROP_POLICY_DENIED, src, KINO_DIR_EGRESS,
				   KINO_OBS_FROM_ENDPOINT, &egress);
	struct endpoint_metrics *dst_metrics = metrics_of(dst->endpoint_id);

	if (!enforce4(skb, dst, KINO_DIR_INGRESS, src->identity, f, &ingress,
		      egress.ct == CT_REPLY))
		return drop_policy(skb, dst_metrics, KINO_DROP_POLICY_DENIED_INGRESS, dst,
				   KINO_DIR_INGRESS, KINO_OBS_FROM_ENDPOINT, &ingress);
	/* Recorded (and reported) only once both points allowed it. */
	if (egress.ct == CT_NEW) {
		ct_create4(f, KINO_DIR_EGRESS, src->identity, src->endpoint_id, &egress);
		verdict_event(skb, src, KINO_DIR_EGRESS, KINO_OBS_FROM_ENDPOINT, &egress);
	}
	if (ingress.ct == CT_NEW) {
		ct_create4(f, KINO_DIR_INGRESS, src->identity, dst->endpoint_id, &ingress);
		verdict_event(skb, dst, KINO_DIR_INGRESS, KINO_OBS_FROM_ENDPOINT, &ingress);
	}

	return redirect_to_pod(skb, eth, dst, src_metrics, dst_metrics);
}

/* deliver_local_ipv4 for IPv6: the destination's IPv6 address in kino_endpoints. */
static __always_inline int deliver_local_ipv6(struct __sk_buff *skb, struct ethhdr *eth,
					      const struct flow6 *f, const struct endpoint_info *src,
					      struct endpoint_metrics *src_metrics)
{
	struct endpoint_key key = {};

	__builtin_memcpy(key.ip6, f->daddr.ip6, sizeof(key.ip6));
	key.family = KINO_FAMILY_IPV6;
	struct endpoint_info *dst = bpf_map_lookup_elem(&kino_endpoints, &key);

	if (!dst || dst->ifindex == src->ifindex)
		return -1;
	struct point egress, ingress;

	if (!enforce6(skb, src, KINO_DIR_EGRESS, dst->identity, f, &egress, 0))
		return drop_policy(skb, src_metrics, KINO_DROP_POLICY_DENIED, src, KINO_DIR_EGRESS,
				   KINO_OBS_FROM_ENDPOINT, &egress);
	struct endpoint_metrics *dst_metrics = metrics_of(dst->endpoint_id);

	if (!enforce6(skb, dst, KINO_DIR_INGRESS, src->identity, f, &ingress,
		      egress.ct == CT_REPLY))
		return drop_policy(skb, dst_metrics, KINO_DROP_POLICY_DENIED_INGRESS, dst,
				   KINO_DIR_INGRESS, KINO_OBS_FROM_ENDPOINT, &ingress);
	if (egress.ct == CT_NEW) {
		ct_create6(f, KINO_DIR_EGRESS, src->identity, src->endpoint_id, &egress);
		verdict_event(skb, src, KINO_DIR_EGRESS, KINO_OBS_FROM_ENDPOINT, &egress);
	}
	if (ingress.ct == CT_NEW) {
		ct_create6(f, KINO_DIR_INGRESS, src->identity, dst->endpoint_id, &ingress);
		verdict_event(skb, dst, KINO_DIR_INGRESS, KINO_OBS_FROM_ENDPOINT, &ingress);
	}

	return redirect_to_pod(skb, eth, dst, src_metrics, dst_metrics);
}

/* ---- Neighbour discovery: the NA responder -------------------------------------------------- */

#define NDP_NA_F_ROUTER       0x80000000U
#define NDP_NA_F_SOLICITED    0x40000000U
#define NDP_NA_F_OVERRIDE     0x20000000U
#define NDP_OPT_TARGET_LLADDR 2

/* A neighbour advertisement with its target link-layer address option (RFC 4861 4.4). */
struct ndp_advert {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__be32 flags;
	__u8 target[16];
	__u8 opt_type;
	__u8 opt_len;          /* in units of 8 bytes */
	__u8 opt_lladdr[ETH_ALEN];
};

/* The first 8 bytes of the advertisement's IPv6 header: version 6, no traffic class or flow
 * label; payload length; next header ICMPv6; hop limit 255 (RFC 4861 requires it). */
struct ndp_ipv6_start {
	__be32 version_class_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
};
#define NDP_ADVERT_FRAME_LEN                                                                     \
	(sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + sizeof(struct ndp_advert))

/* answer_neighbour_solicitation: not for the datapath to answer (the stack gets it), and
 * failed half way (the packet is no longer the solicitation: drop it). */
#define NS_NOT_ANSWERED -1
#define NS_BROKEN       -2

static __always_inline int ipv6_bytes_zero(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return !(w[0] | w[1] | w[2] | w[3]);
}

/*
 * The NA responder (Cilium's): answers a pod's neighbour solicitation with the lxc's MAC,
 * rewriting the packet into the advertisement and sending it back out of the lxc. The node's
 * kernel would not answer: the gateway address lives on kino_host, and IPv6 (unlike ARP)
 * answers a solicitation only for addresses of the interface it arrives on. Answered: every
 * global target that is not the pod's own address — in practice the gateway, the only
 * neighbour a pod with a /128 and a default route via the gateway ever resolves; whatever
 * else it resolves is reached through the node anyway (as proxy ARP would). Not answered
 * (NS_NOT_ANSWERED): DAD probes (unspecified source; an answer would make the pod give its
 * address up), link-local and multicast targets, pods without IPv6, invalid solicitations.
 * A subprogram (not inlined) so its frame does not add to from_container's stack.
 */
static __noinline int answer_neighbour_solicitation(struct __sk_buff *skb,
						    const struct endpoint_info *ep,
						    const struct flow6 *f, __u8 hop_limit,
						    const __u8 *pod_mac)
{
	struct ndp_advert na = {};

	if (!(ep->flags & KINO_EP_F_IPV6) || hop_limit != 255 || f->icmp6_code != 0 ||
	    ipv6_bytes_zero(f->saddr.ip6))
		return NS_NOT_ANSWERED;
	if (bpf_skb_load_bytes(skb, f->l4_off + 8, na.target, sizeof(na.target)) < 0)
		return NS_NOT_ANSWERED;
	if (na.target[0] == 0xff || (na.target[0] == 0xfe && (na.target[1] & 0xc0) == 0x80) ||
	    ipv6_bytes_zero(na.target) || ipv6_equal((const struct in6_addr *)na.target, ep->ipv6))
		return NS_NOT_ANSWERED;
	na.type = ICMPV6_NEIGHBOUR_ADVERT;
	na.flags = bpf_htonl(NDP_NA_F_ROUTER | NDP_NA_F_SOLICITED | NDP_NA_F_OVERRIDE);
	na.opt_type = NDP_OPT_TARGET_LLADDR;
	na.opt_len = 1;
	__builtin_memcpy(na.opt_lladdr, ep->node_mac, ETH_ALEN);

	/* ICMPv6 checksum over the pseudo-header — source (the target), destination (the
	 * solicitation's source), upper-layer length and next header (the seed) — and the
	 * message. Built piece by piece: the responder's frame stays small, as it adds to
	 * from_container's. */
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)na.target, sizeof(na.target),
				  bpf_htonl(sizeof(na)) + bpf_htonl(IPPROTO_ICMPV6));

	if (sum >= 0)
		sum = bpf_csum_diff(NULL, 0, (__be32 *)f->saddr.ip6, sizeof(f->saddr.ip6),
				    (__u32)sum);
	if (sum >= 0)
		sum = bpf_csum_diff(NULL, 0, (__be32 *)&na, sizeof(na), (__u32)sum);
	if (sum < 0)
		return NS_NOT_ANSWERED;
	__u32 folded = (__u32)sum;

	folded = (folded & 0xffff) + (folded >> 16);
	folded = (folded & 0xffff) + (folded >> 16);
	na.checksum = (__u16)~folded;

	/* The frame, written in place: to the pod's MAC (read from the solicitation before
	 * anything changes) from the lxc's, the EtherType staying IPv6; the IPv6 header from the
	 * target to the solicitation's source (f keeps it); the advertisement. */
	struct ndp_ipv6_start start = {
		.version_class_flow = bpf_htonl(6U << 28),
		.payload_len = bpf_htons(sizeof(na)),
		.nexthdr = IPPROTO_ICMPV6,
		.hop_limit = 255,
	};
	const __u32 ip6_off = sizeof(struct ethhdr);
	__u8 dst_mac[ETH_ALEN];

	__builtin_memcpy(dst_mac, pod_mac, ETH_ALEN);
	if (bpf_skb_store_bytes(skb, 0, dst_mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, ep->node_mac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_change_tail(skb, NDP_ADVERT_FRAME_LEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ip6_off, &start, sizeof(start), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ip6_off + 8, na.target, sizeof(na.target), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ip6_off + 24, f->saddr.ip6, sizeof(f->saddr.ip6), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ip6_off + sizeof(struct ipv6hdr), &na, sizeof(na), 0) < 0)
		return NS_BROKEN;
	/* Out of the lxc, back to the pod (to_container lets neighbour discovery pass). */
	return bpf_redirect(skb->ifindex, 0);
}

/*
 * An IPv6 packet the pod sent, its source checked: neighbour discovery to the NA responder or
 * the stack (never policy); a local pod by redirect after both points' policy; anything else
 * (the node, other nodes, the world) to the stack after the egress policy, the peer's
 * identity from the ipcache. The same as IPv4, with ICMPv6 as the protocol policy matches
 * (58: a rule for ICMP, 1, does not cover it; one for ANY does).
 */
static __always_inline int from_container_ipv6(struct __sk_buff *skb, struct ethhdr *eth,
					       const struct ipv6hdr *ip6,
					       const struct endpoint_info *ep,
					       struct endpoint_metrics *m)
{
	__u32 slot = 0;
	struct flow6 *f = bpf_map_lookup_elem(&kino_flow6_scratch, &slot);

	if (!f || parse_flow6(skb, ip6, f) < 0)
		return drop_sent(skb, m, ep, KINO_DROP_INVALID_PACKET);
	if (icmp6_is_neighbour_discovery(f)) {
		if (f->icmp6_type == ICMPV6_NEIGHBOUR_SOLICIT) {
			int ret = answer_neighbour_solicitation(skb, ep, f, ip6->hop_limit,
								eth->h_source);

			if (ret == NS_BROKEN)
				return drop_sent(skb, m, ep, KINO_DROP_INVALID_PACKET);
			if (ret != NS_NOT_ANSWERED)
				return ret;
		}
		return to_stack(m);
	}
	int ret = deliver_local_ipv6(skb, eth, f, ep, m);

	if (ret >= 0)
		return ret;
	struct point pt;

	if (!enforce6(skb, ep, KINO_DIR_EGRESS, ipcache_identity6(&f->daddr), f, &pt, 0))
		return drop_policy(skb, m, KINO_DROP_POLICY_DENIED, ep, KINO_DIR_EGRESS,
				   KINO_OBS_FROM_ENDPOINT, &pt);
	if (pt.ct == CT_NEW) {
		ct_create6(f, KINO_DIR_EGRESS, ep->identity, ep->endpoint_id, &pt);
		verdict_event(skb, ep, KINO_DIR_EGRESS, KINO_OBS_FROM_ENDPOINT, &pt);
	}
	return to_stack(m);
}

/* An IPv6 packet the stack sends to the pod: conntrack and the pod's ingress policy, the
 * peer's identity from the ipcache; neighbour discovery passes. -1: deliver it. */
static __always_inline int to_container_ipv6(struct __sk_buff *skb,
					     const struct endpoint_info *ep,
					     struct endpoint_metrics *m)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct flow6 f;
	struct point pt;

	if ((void *)(ip6 + 1) > data_end || parse_flow6(skb, ip6, &f) < 0)
		return drop_event(skb, m, KINO_DROP_INVALID_PACKET, ep->endpoint_id,
				  KINO_DIR_INGRESS, KINO_OBS_TO_ENDPOINT, 0, ep->identity,
				  KINO_EVENT_F_DST_IDENTITY);
	if (icmp6_is_neighbour_discovery(&f))
		return -1;
	__u32 remote = ipcache_identity6(&f.saddr);

	if (!enforce6(skb, ep, KINO_DIR_INGRESS, remote, &f, &pt, 0))
		return drop_policy(skb, m, KINO_DROP_POLICY_DENIED_INGRESS, ep, KINO_DIR_INGRESS,
				   KINO_OBS_TO_ENDPOINT, &pt);
	if (pt.ct == CT_NEW) {
		ct_create6(&f, KINO_DIR_INGRESS, remote, ep->endpoint_id, &pt);
		verdict_event(skb, ep, KINO_DIR_INGRESS, KINO_OBS_TO_ENDPOINT, &pt);
	}
	return -1;
}

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&kino_lxc, &ifindex);

	if (!ep)
		return drop_event(skb, metrics_of(0), KINO_DROP_UNKNOWN_ENDPOINT, 0, 0,
				  KINO_OBS_FROM_ENDPOINT, 0, 0, 0);

	struct endpoint_metrics *m = metrics_of(ep->endpoint_id);

	if (m) {
		m->from_container_packets++;
		m->from_container_bytes += skb->len;
	}

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return drop_sent(skb, m, ep, KINO_DROP_INVALID_PACKET);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP): {
		struct iphdr *ip4 = (void *)(eth + 1);

		if ((void *)(ip4 + 1) > data_end)
			return drop_sent(skb, m, ep, KINO_DROP_INVALID_PACKET);
		if (ip4->saddr != ep->ipv4)
			return drop_sent(skb, m, ep, KINO_DROP_SPOOFED_SOURCE);
		struct flow4 f;

		if (parse_flow4(skb, ip4, &f) < 0)
			return drop_sent(skb, m, ep, KINO_DROP_INVALID_PACKET);
		int ret = deliver_local_ipv4(skb, eth, &f, ep, m);

		if (ret >= 0)
			return ret;
		/* The node (kino_host's gateway IP) or beyond: the stack routes it. */
		struct point pt;

		if (!enforce4(skb, ep, KINO_DIR_EGRESS, ipcache_identity4(f.daddr), &f, &pt, 0))
			return drop_policy(skb, m, KINO_DROP_POLICY_DENIED, ep, KINO_DIR_EGRESS,
					   KINO_OBS_FROM_ENDPOINT, &pt);
		if (pt.ct == CT_NEW) {
			ct_create4(&f, KINO_DIR_EGRESS, ep->identity, ep->endpoint_id, &pt);
			verdict_event(skb, ep, KINO_DIR_EGRESS, KINO_OBS_FROM_ENDPOINT, &pt);
		}
		return to_stack(m);
	}
	case bpf_htons(ETH_P_ARP): {
		struct arphdr *arp = (void *)(eth + 1);
		struct arp_eth_ipv4 *body = (void *)(arp + 1);

		if ((void *)(body + 1) > data_end)
			return drop_sent(skb, m, ep, KINO_DROP_INVALID_PACKET);
		/* A pod may only announce its own address (0.0.0.0 is an ARP probe). */
		if (body->sip != 0 && body->sip != ep->ipv4)
			return drop_sent(skb, m, ep, KINO_DROP_SPOOFED_SOURCE);
		/* The stack answers for the gateway: it is a local address of the node. */
		return to_stack(m);
	}
	case bpf_htons(ETH_P_IPV6): {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return drop_sent(skb, m, ep, KINO_DROP_INVALID_PACKET);
		if (!ipv6_always_allowed_source(&ip6->saddr) &&
		    !((ep->flags & KINO_EP_F_IPV6) && ipv6_equal(&ip6->saddr, ep->ipv6)))
			return drop_sent(skb, m, ep, KINO_DROP_SPOOFED_SOURCE);
		return from_container_ipv6(skb, eth, ip6, ep, m);
	}
	default:
		return drop_sent(skb, m, ep, KINO_DROP_UNSUPPORTED_L3);
	}
}

SEC("classifier")
int to_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&kino_lxc, &ifindex);

	if (!ep)
		return TC_ACT_OK;
	struct endpoint_metrics *m = metrics_of(ep->endpoint_id);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	/* IPv4 and IPv6 from the stack (the node, or routed from elsewhere): conntrack and
	 * ingress policy, the peer's identity from the ipcache. ARP and neighbour discovery pass. */
	if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = (void *)(eth + 1);
		struct flow4 f;
		struct point pt;

		if ((void *)(ip4 + 1) > data_end || parse_flow4(skb, ip4, &f) < 0)
			return drop_event(skb, m, KINO_DROP_INVALID_PACKET, ep->endpoint_id,
					  KINO_DIR_INGRESS, KINO_OBS_TO_ENDPOINT, 0, ep->identity,
					  KINO_EVENT_F_DST_IDENTITY);
		__u32 remote = ipcache_identity4(f.saddr);

		if (!enforce4(skb, ep, KINO_DIR_INGRESS, remote, &f, &pt, 0))
			return drop_policy(skb, m, KINO_DROP_POLICY_DENIED_INGRESS, ep,
					   KINO_DIR_INGRESS, KINO_OBS_TO_ENDPOINT, &pt);
		if (pt.ct == CT_NEW) {
			ct_create4(&f, KINO_DIR_INGRESS, remote, ep->endpoint_id, &pt);
			verdict_event(skb, ep, KINO_DIR_INGRESS, KINO_OBS_TO_ENDPOINT, &pt);
		}
	} else if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		int ret = to_container_ipv6(skb, ep, m);

		if (ret >= 0)
			return ret;
	}
	if (m) {
		m->to_container_packets++;
		m->to_container_bytes += skb->len;
	}
	return TC_ACT_OK;
}

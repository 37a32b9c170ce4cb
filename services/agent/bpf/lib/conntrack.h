/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Conntrack (kino_ct, an LRU hash): a connection as seen at one enforcement point, in the
 * direction of its first packet. ct_lookup classifies a packet as NEW, ESTABLISHED or REPLY
 * and accounts it; ct_related4/6 find the connection an ICMP(v6) error quotes (RELATED);
 * ct_create records a connection a point allowed, with the verdict cache (struct point) that
 * lets its next packets skip the policy lookups. Both families share the code but the
 * parsing of a quoted packet. Lifetimes and flags: kino_maps.h.
 */
#ifndef KINO_LIB_CONNTRACK_H
#define KINO_LIB_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"
#include "maps.h"
#include "parse.h"

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

/* The tuple of a packet (either family: parse.h) at a point of `direction`. */
static __always_inline void ct_tuple(struct ct_key *key, __u8 family, const struct flow4 *f,
				     __u8 direction)
{
	if (family == KINO_FAMILY_IPV4) {
		key->saddr.ip4 = f->saddr;
		key->daddr.ip4 = f->daddr;
	} else {
		key->saddr = flow6_of(f)->saddr;
		key->daddr = flow6_of(f)->daddr;
	}
	key->sport = f->sport;
	key->dport = f->dport;
	key->protocol = f->protocol;
	key->family = family;
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

/* Classifies a packet (either family: parse.h) at an enforcement point of direction
 * `direction` and accounts it; *established is the connection's entry for an ESTABLISHED
 * packet. */
static __always_inline int ct_lookup(__u8 family, const struct flow4 *f, __u8 direction,
				     struct ct_entry **established, int reply_likely)
{
	struct ct_key key = {};

	ct_tuple(&key, family, f, direction);
	return ct_classify(&key, f, established, reply_likely);
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

/* Records a new connection allowed at a point, under `key`. */
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

/* Records a new connection (either family: parse.h) allowed at a point of `direction`. The
 * key is built before ct_insert's ICMP error check: checking first does the same, but clang
 * then lays from_container out differently and the verifier walks 3-6 % more instructions. */
static __always_inline void ct_create(__u8 family, const struct flow4 *f, __u8 direction,
				      __u32 src_identity, __u32 endpoint_id,
				      const struct point *pt)
{
	struct ct_key key = {};

	ct_tuple(&key, family, f, direction);
	ct_insert(&key, f, src_identity, endpoint_id, pt);
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

/* The ports of a quoted packet's L4 header at `off` into the key, as parse_flow4 and
 * parse_flow6 read a packet's: TCP/UDP/SCTP ports, the echo identifier of the family's ICMP
 * (`icmp_protocol`), nothing for any other protocol (its connections have ports 0, whatever
 * its header holds); -1 if truncated. */
static __always_inline int quoted_ports(struct __sk_buff *skb, __u32 off, __u8 protocol,
					__u8 icmp_protocol, __u8 echo_request, __u8 echo_reply,
					struct ct_key *key)
{
	__u8 l4[6]; /* TCP/UDP/SCTP: ports; ICMP(v6): type, code, checksum, identifier */
	int ports = protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP;

	if (!ports && protocol != icmp_protocol)
		return 0;
	if (bpf_skb_load_bytes(skb, off, l4, sizeof(l4)) < 0)
		return -1;
	if (ports) {
		__builtin_memcpy(&key->sport, &l4[0], 2);
		__builtin_memcpy(&key->dport, &l4[2], 2);
	} else if (l4[0] == echo_request) {
		__builtin_memcpy(&key->sport, &l4[4], 2);
	} else if (l4[0] == echo_reply) {
		__builtin_memcpy(&key->dport, &l4[4], 2);
	}
	return 0;
}

/* The quoted packet of an ICMP error to an IPv4 packet. ct_related4 and ct_related6 stay two
 * subprograms rather than one body: apart from the shared quoted_ports and ct_related they
 * only parse their family's quoted IP header (IPv4's ihl and fragment offset, IPv6's fixed
 * header), and a subprogram cannot fold a constant family away as the inlined bodies do. */
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
	    quoted_ports(skb, off + ip.ihl * 4, ip.protocol, IPPROTO_ICMP, ICMP_ECHO_REQUEST,
			 ICMP_ECHO_REPLY, &key) < 0)
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
	if (quoted_ports(skb, off + sizeof(ip), ip.nexthdr, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST,
			 ICMPV6_ECHO_REPLY, &key) < 0)
		return 0;
	return ct_related(&key);
}

#endif /* KINO_LIB_CONNTRACK_H */

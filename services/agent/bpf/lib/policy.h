/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Policy enforcement at a point (the egress of a packet's source endpoint or the ingress of
 * its destination): kino_ep_policy says which directions of an endpoint are enforced,
 * kino_policy holds the verdicts (two LPM lookups: the peer's identity, then every peer), and
 * conntrack lets replies, related ICMP errors and cached verdicts through (enforce).
 */
#ifndef KINO_LIB_POLICY_H
#define KINO_LIB_POLICY_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"
#include "maps.h"
#include "parse.h"
#include "conntrack.h"

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
 * `remote` to destination port `port` (network order) through: its direction not enforced, or
 * the policy allowing it (a DENY for the peer or for every peer wins, as in policy_allows). No
 * hit counters: nothing is decided by an entry here, only whether the connection a packet
 * answers was allowed. A subprogram, so its key stays off the callers' stacks.
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
 * packet (enforce); `f` gives the L4 fields.
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
 * enforce_point for a packet of either family (parse.h): the same policy map for both (it is
 * keyed by identity, protocol and port, not by address), conntrack keys of the family. An
 * ICMP(v6) error about a tracked connection is RELATED: it passes as a reply does (path MTU
 * discovery, unreachable ports); any other is a new ICMP(v6) packet for the policy.
 */
static __always_inline int enforce(struct __sk_buff *skb, const struct endpoint_info *ep,
				   __u8 direction, __u32 remote, __u8 family,
				   const struct flow4 *f, struct point *pt, int reply_likely)
{
	struct ct_entry *e = NULL;

	if (f->icmp_quote && (family == KINO_FAMILY_IPV4
				      ? ct_related4(skb, f->icmp_quote, direction)
				      : ct_related6(skb, f->icmp_quote, direction)))
		pt->ct = CT_RELATED;
	else
		pt->ct = ct_lookup(family, f, direction, &e, reply_likely);
	return enforce_point(ep, direction, remote, f, e, pt);
}

#endif /* KINO_LIB_POLICY_H */

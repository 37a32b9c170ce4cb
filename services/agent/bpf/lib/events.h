/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Flow events (#6): every drop and every new connection an enforcement point allows is
 * reported to the kino_events ring buffer (emit_event; a full ring is counted in
 * kino_event_counters, never silent). Drop with drop_event() or its drop_sent(),
 * drop_received(), drop_policy() rather than metrics.h's drop() so the drop is reported;
 * verdict_event() reports a new connection right after ct_create.
 */
#ifndef KINO_LIB_EVENTS_H
#define KINO_LIB_EVENTS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"
#include "maps.h"
#include "metrics.h"
#include "conntrack.h"

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

/* Drops a packet the stack sends to endpoint `ep`, before any policy decision (parsing). */
static __always_inline int drop_received(struct __sk_buff *skb, struct endpoint_metrics *m,
					 const struct endpoint_info *ep, __u32 reason)
{
	return drop_event(skb, m, reason, ep->endpoint_id, KINO_DIR_INGRESS, KINO_OBS_TO_ENDPOINT,
			  0, ep->identity, KINO_EVENT_F_DST_IDENTITY);
}

/*
 * Reports what `ep`'s point of `direction` decided about a packet (type, verdict, drop reason),
 * the peer being pt->remote: both identities known, and the packet classified by conntrack
 * (replies pass without policy, so neither a denied packet nor a new connection is one).
 */
static __always_inline void point_event(struct __sk_buff *skb, const struct endpoint_info *ep,
					__u8 direction, __u8 point, const struct point *pt,
					__u8 type, __u8 verdict, __u8 reason)
{
	struct flow_event known = {
		.endpoint_id = ep->endpoint_id,
		.src_identity = direction == KINO_DIR_EGRESS ? ep->identity : pt->remote,
		.dst_identity = direction == KINO_DIR_EGRESS ? pt->remote : ep->identity,
		.type = type,
		.verdict = verdict,
		.drop_reason = reason,
		.direction = direction,
		.obs_point = point,
		.match_type = pt->match,
		.flags = KINO_EVENT_F_SRC_IDENTITY | KINO_EVENT_F_DST_IDENTITY |
			 KINO_EVENT_F_REPLY_KNOWN,
	};

	emit_event(skb, &known);
}

/* Drops a packet `ep`'s policy denied in `direction` (the peer being pt->remote). */
static __always_inline int drop_policy(struct __sk_buff *skb, struct endpoint_metrics *m,
				       __u32 reason, const struct endpoint_info *ep,
				       __u8 direction, __u8 point, const struct point *pt)
{
	point_event(skb, ep, direction, point, pt, KINO_EVENT_DROP, KINO_EVENT_DROPPED, reason);
	return drop(m, reason);
}

/* Reports the policy verdict of a new connection `ep`'s point of `direction` allowed. */
static __always_inline void verdict_event(struct __sk_buff *skb, const struct endpoint_info *ep,
					  __u8 direction, __u8 point, const struct point *pt)
{
	point_event(skb, ep, direction, point, pt, KINO_EVENT_POLICY_VERDICT,
		    KINO_EVENT_FORWARDED, 0);
}

#endif /* KINO_LIB_EVENTS_H */

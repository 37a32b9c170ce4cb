/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Local delivery: a packet from one pod to another pod of this node goes through the source's
 * egress and the destination's ingress policy, then straight into the destination pod's
 * netns by bpf_redirect_peer, skipping the node's stack and the destination lxc's egress
 * (so this path counts it as the destination's to_container traffic itself). The overlay
 * (overlay.h) ends its deliveries with redirect_to_pod too.
 */
#ifndef KINO_LIB_LOCAL_DELIVERY_H
#define KINO_LIB_LOCAL_DELIVERY_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

#include "kino_maps.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "conntrack.h"
#include "policy.h"
#include "events.h"

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

/* The local endpoint holding `addr` (IPv4: 4 bytes, network order; IPv6: 16 bytes), or NULL. */
static __always_inline struct endpoint_info *local_endpoint(__u8 family, const void *addr)
{
	struct endpoint_key key = {};

	if (family == KINO_FAMILY_IPV4)
		__builtin_memcpy(&key.ip4, addr, sizeof(key.ip4));
	else
		__builtin_memcpy(key.ip6, addr, sizeof(key.ip6));
	key.family = family;
	return bpf_map_lookup_elem(&kino_endpoints, &key);
}

/* The local endpoint a packet (either family: parse.h) is for, or NULL. */
static __always_inline struct endpoint_info *local_destination(__u8 family, const struct flow4 *f)
{
	if (family == KINO_FAMILY_IPV4)
		return local_endpoint(family, &f->daddr);
	return local_endpoint(family, flow6_of(f)->daddr.ip6);
}

/*
 * The ingress point of local endpoint `ep` for a packet (either family: parse.h) from a peer
 * of identity `remote` that arrives through the stack (to_container) or the overlay:
 * conntrack and the endpoint's ingress policy, a new connection recorded and reported at its
 * to-endpoint point. -1: deliver it; else the drop's verdict.
 */
static __always_inline int enforce_ingress(struct __sk_buff *skb, const struct endpoint_info *ep,
					   struct endpoint_metrics *m, __u32 remote, __u8 family,
					   const struct flow4 *f)
{
	struct point pt;

	if (!enforce(skb, ep, KINO_DIR_INGRESS, remote, family, f, &pt, 0))
		return drop_policy(skb, m, KINO_DROP_POLICY_DENIED_INGRESS, ep, KINO_DIR_INGRESS,
				   KINO_OBS_TO_ENDPOINT, &pt);
	if (pt.ct == CT_NEW) {
		ct_create(family, f, KINO_DIR_INGRESS, remote, ep->endpoint_id, &pt);
		verdict_event(skb, ep, KINO_DIR_INGRESS, KINO_OBS_TO_ENDPOINT, &pt);
	}
	return -1;
}

/*
 * Delivers a packet (either family: parse.h) to a pod on this node, found by its destination
 * address in kino_endpoints, after the source's egress and the destination's ingress policy;
 * returns -1 when the destination is not a local pod. Both identities are known from the
 * endpoint entries, so no ipcache lookup is needed.
 */
static __always_inline int deliver_local(struct __sk_buff *skb, struct ethhdr *eth, __u8 family,
					 const struct flow4 *f, const struct endpoint_info *src,
					 struct endpoint_metrics *src_metrics)
{
	struct endpoint_info *dst = local_destination(family, f);

	if (!dst || dst->ifindex == src->ifindex)
		return -1;
	struct point egress, ingress;

	if (!enforce(skb, src, KINO_DIR_EGRESS, dst->identity, family, f, &egress, 0))
		return drop_policy(skb, src_metrics, KINO_DROP_POLICY_DENIED, src, KINO_DIR_EGRESS,
				   KINO_OBS_FROM_ENDPOINT, &egress);
	struct endpoint_metrics *dst_metrics = metrics_of(dst->endpoint_id);

	if (!enforce(skb, dst, KINO_DIR_INGRESS, src->identity, family, f, &ingress,
		     egress.ct == CT_REPLY))
		return drop_policy(skb, dst_metrics, KINO_DROP_POLICY_DENIED_INGRESS, dst,
				   KINO_DIR_INGRESS, KINO_OBS_FROM_ENDPOINT, &ingress);
	/* Recorded (and reported) only once both points allowed it. */
	if (egress.ct == CT_NEW) {
		ct_create(family, f, KINO_DIR_EGRESS, src->identity, src->endpoint_id, &egress);
		verdict_event(skb, src, KINO_DIR_EGRESS, KINO_OBS_FROM_ENDPOINT, &egress);
	}
	if (ingress.ct == CT_NEW) {
		ct_create(family, f, KINO_DIR_INGRESS, src->identity, dst->endpoint_id, &ingress);
		verdict_event(skb, dst, KINO_DIR_INGRESS, KINO_OBS_FROM_ENDPOINT, &ingress);
	}

	return redirect_to_pod(skb, eth, dst, src_metrics, dst_metrics);
}

#endif /* KINO_LIB_LOCAL_DELIVERY_H */

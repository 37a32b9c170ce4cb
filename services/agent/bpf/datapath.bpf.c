/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Kinocilium datapath v1 (issue #4): tc programs on every endpoint's lxc (host side veth).
 *
 *   from_container  lxc ingress (packets the pod sends): source check, local delivery by
 *                   bpf_redirect_peer to the destination pod, everything else to the stack.
 *   to_container    lxc egress (packets the stack sends toward the pod): counts.
 *
 * Layouts of the maps are in kino_maps.h (mirrored in Rust). Policy (#5) and flow events (#6)
 * hook in where marked.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
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
	/* #6: emit a drop event to kino_events here. */
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

/* Delivers an IPv4 packet to a pod on this node, or returns -1 when the destination is not one. */
static __always_inline int deliver_local_ipv4(struct __sk_buff *skb, struct ethhdr *eth,
					      __be32 daddr, const struct endpoint_info *src,
					      struct endpoint_metrics *src_metrics)
{
	struct endpoint_key key = {};

	key.ip4 = daddr;
	key.family = KINO_FAMILY_IPV4;
	struct endpoint_info *dst = bpf_map_lookup_elem(&kino_endpoints, &key);

	if (!dst || dst->ifindex == src->ifindex)
		return -1;
	/* #5: egress policy of src and ingress policy of dst go here. */
	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, dst->node_mac, ETH_ALEN);

	struct endpoint_metrics *dst_metrics = metrics_of(dst->endpoint_id);

	if (dst_metrics) {
		dst_metrics->to_container_packets++;
		dst_metrics->to_container_bytes += skb->len;
	}
	if (src_metrics)
		src_metrics->local_redirect_packets++;
	/* Straight into the destination pod's netns: skips the node's stack and the lxc egress. */
	return bpf_redirect_peer(dst->ifindex, 0);
}

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&kino_lxc, &ifindex);

	if (!ep)
		return drop(metrics_of(0), KINO_DROP_UNKNOWN_ENDPOINT);

	struct endpoint_metrics *m = metrics_of(ep->endpoint_id);

	if (m) {
		m->from_container_packets++;
		m->from_container_bytes += skb->len;
	}

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return drop(m, KINO_DROP_INVALID_PACKET);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP): {
		struct iphdr *ip4 = (void *)(eth + 1);

		if ((void *)(ip4 + 1) > data_end)
			return drop(m, KINO_DROP_INVALID_PACKET);
		if (ip4->saddr != ep->ipv4)
			return drop(m, KINO_DROP_SPOOFED_SOURCE);
		int ret = deliver_local_ipv4(skb, eth, ip4->daddr, ep, m);

		if (ret >= 0)
			return ret;
		/* The node (kino_host's gateway IP) or beyond: the stack routes it. */
		return to_stack(m);
	}
	case bpf_htons(ETH_P_ARP): {
		struct arphdr *arp = (void *)(eth + 1);
		struct arp_eth_ipv4 *body = (void *)(arp + 1);

		if ((void *)(body + 1) > data_end)
			return drop(m, KINO_DROP_INVALID_PACKET);
		/* A pod may only announce its own address (0.0.0.0 is an ARP probe). */
		if (body->sip != 0 && body->sip != ep->ipv4)
			return drop(m, KINO_DROP_SPOOFED_SOURCE);
		/* The stack answers for the gateway: it is a local address of the node. */
		return to_stack(m);
	}
	case bpf_htons(ETH_P_IPV6): {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return drop(m, KINO_DROP_INVALID_PACKET);
		if (!ipv6_always_allowed_source(&ip6->saddr) &&
		    !((ep->flags & KINO_EP_F_IPV6) && ipv6_equal(&ip6->saddr, ep->ipv6)))
			return drop(m, KINO_DROP_SPOOFED_SOURCE);
		return to_stack(m);
	}
	default:
		return drop(m, KINO_DROP_UNSUPPORTED_L3);
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

	if (m) {
		m->to_container_packets++;
		m->to_container_bytes += skb->len;
	}
	/* #5: ingress policy of ep goes here. */
	return TC_ACT_OK;
}

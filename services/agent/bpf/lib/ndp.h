/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * IPv6 neighbour discovery: which ICMPv6 is neighbour discovery or MLD (never subject to
 * policy, never tracked), and the NA responder that answers a pod's neighbour solicitation
 * with its lxc's MAC (the node's kernel would not: the gateway address is on kino_host).
 */
#ifndef KINO_LIB_NDP_H
#define KINO_LIB_NDP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"
#include "parse.h"

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

#endif /* KINO_LIB_NDP_H */

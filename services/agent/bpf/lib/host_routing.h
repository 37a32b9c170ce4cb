/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * BPF host routing in native mode (issue #13), as Cilium's: a packet between a local pod and
 * another node's pod does not go through the node's IP forwarding (netfilter, the backlog
 * queue of a second device, the routing decision made again).
 *
 *   to_underlay  from_container, after the pod's egress policy: the kernel's FIB says where
 *                the peer's next hop is (bpf_fib_lookup on the route the stack would take),
 *                the TTL is decremented as forwarding does, and the packet goes straight out
 *                of the underlay device (bpf_redirect with the neighbour's MAC, or
 *                bpf_redirect_neigh when the neighbour is not resolved yet). -1: the stack
 *                takes it, as before — not native mode, not a cluster peer (what leaves the
 *                cluster is masqueraded by the stack), TTL expiring, no route, a local
 *                address, or too big for the device (the stack sends "fragmentation
 *                needed").
 *   from_netdev  (datapath.bpf.c) the underlay device's ingress: a packet for a local pod
 *                gets conntrack and the pod's ingress policy (the peer's identity from the
 *                ipcache), its TTL decremented, and goes into the pod by bpf_redirect_peer;
 *                anything else to the stack.
 */
#ifndef KINO_LIB_HOST_ROUTING_H
#define KINO_LIB_HOST_ROUTING_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"
#include "maps.h"
#include "parse.h"
#include "overlay.h"

/* Address families of struct bpf_fib_lookup (linux/socket.h drags in libc headers). */
#define KINO_AF_INET  2
#define KINO_AF_INET6 10

/* to_underlay's FIB query and next hop, per CPU: off from_container's stack, which the
 * inlined IPv4 and IPv6 paths already fill close to the verifier's 512 bytes (tc programs do
 * not nest on a CPU). Internal: not pinned. */
struct fib_scratch {
	struct bpf_fib_lookup fib;
	struct bpf_redir_neigh nh;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fib_scratch);
} kino_fib_scratch SEC(".maps");

/*
 * Decrements the packet's TTL (IPv4, checksum updated) or hop limit (IPv6) as forwarding
 * does; -1 when it would reach 0 (the stack then answers "time exceeded") or the header is
 * not there. Invalidates packet pointers.
 */
static __always_inline int decrement_ttl(struct __sk_buff *skb, __u8 family)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (family == KINO_FAMILY_IPV4) {
		struct iphdr *ip4 = data + ETH_HLEN;

		if ((void *)(ip4 + 1) > data_end || ip4->ttl <= 1)
			return -1;
		/* TTL and protocol share a 16-bit word of the header checksum. */
		__be16 old = *(__be16 *)&ip4->ttl;

		ip4->ttl--;
		__be16 new = *(__be16 *)&ip4->ttl;

		return bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new,
					   sizeof(new)) < 0
			       ? -1
			       : 0;
	}
	struct ipv6hdr *ip6 = data + ETH_HLEN;

	if ((void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1)
		return -1;
	ip6->hop_limit--;
	return 0;
}

/* Whether a peer is inside the cluster (a pod, a pod CIDR, a node): a native route or a
 * local device reaches it without masquerading. */
static __always_inline int cluster_peer(const struct ipcache_entry *peer)
{
	return peer && peer->identity != KINO_IDENTITY_WORLD;
}

/*
 * Native mode, a packet from a local pod to `peer` (after its egress policy): out of the
 * underlay device by the FIB's route, or -1 when the stack takes it (see the header).
 */
static __always_inline int to_underlay(struct __sk_buff *skb, __u8 family,
				       const struct ipcache_entry *peer)
{
	const struct node_config *cfg = node_config();

	if (!cfg || cfg->routing_mode != KINO_ROUTING_NATIVE || !cluster_peer(peer))
		return -1;
	__u32 slot = 0;
	struct fib_scratch *scratch = bpf_map_lookup_elem(&kino_fib_scratch, &slot);

	if (!scratch)
		return -1;
	struct bpf_fib_lookup *fib = &scratch->fib;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = skb->ifindex;
	if (family == KINO_FAMILY_IPV4) {
		struct iphdr *ip4 = data + ETH_HLEN;

		if ((void *)(ip4 + 1) > data_end)
			return -1;
		fib->family = KINO_AF_INET;
		fib->tos = ip4->tos;
		fib->l4_protocol = ip4->protocol;
		fib->ipv4_src = ip4->saddr;
		fib->ipv4_dst = ip4->daddr;
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		fib->family = KINO_AF_INET6;
		fib->l4_protocol = ip6->nexthdr;
		__builtin_memcpy(fib->ipv6_src, &ip6->saddr, sizeof(fib->ipv6_src));
		__builtin_memcpy(fib->ipv6_dst, &ip6->daddr, sizeof(fib->ipv6_dst));
	}
	/* tot_len 0: the MTU is checked below, per segment of a GSO packet. */
	long ret = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);

	if (ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	__u32 mtu_len = 0;

	if (bpf_check_mtu(skb, fib->ifindex, &mtu_len, 0, BPF_MTU_CHK_SEGS) !=
	    BPF_MTU_CHK_RET_SUCCESS)
		return -1;
	if (decrement_ttl(skb, family) < 0)
		return -1;
	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh *nh = &scratch->nh;

		__builtin_memset(nh, 0, sizeof(*nh));
		if (family == KINO_FAMILY_IPV4) {
			nh->nh_family = KINO_AF_INET;
			nh->ipv4_nh = fib->ipv4_dst;
		} else {
			nh->nh_family = KINO_AF_INET6;
			__builtin_memcpy(nh->ipv6_nh, fib->ipv6_dst, sizeof(nh->ipv6_nh));
		}
		return bpf_redirect_neigh(fib->ifindex, nh, sizeof(*nh), 0);
	}
	if (bpf_skb_store_bytes(skb, 0, fib->dmac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib->smac, ETH_ALEN, 0) < 0)
		return -1;
	return bpf_redirect(fib->ifindex, 0);
}

#endif /* KINO_LIB_HOST_ROUTING_H */

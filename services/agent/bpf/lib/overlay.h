/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * The overlay between nodes (issue #13), Cilium's design: kino_vxlan is a collect-metadata
 * VXLAN device; a packet for another node's prefix (its ipcache entry names a tunnel
 * endpoint) gets a tunnel key — remote = that node's underlay address, VNI = the SOURCE's
 * security identity — and the device encapsulates it. The receiving node reads the key back:
 * the outer source must be a known node (its ipcache identity is remote-node) and the VNI a
 * cluster identity or remote-node, and the VNI is the identity the destination's ingress
 * policy sees, whatever the inner source address claims.
 *
 *   to_tunnel            from_container's remote delivery in tunnel mode (the packet is
 *                        redirected to kino_vxlan with its key), or -1: the stack takes it —
 *                        native mode, no tunnel endpoint, or too big for the tunnel (the
 *                        stack's route via kino_vxlan has the tunnel MTU, so its forwarding
 *                        sends the ICMP "fragmentation needed" / "packet too big" back: no
 *                        black hole, cilium#4323)
 *   overlay_sender_ok    from_overlay's checks of the outer source and the VNI
 *   deliver_from_overlay a decapsulated packet to a local pod: conntrack and ingress policy
 *                        with the VNI identity, then redirect_to_pod
 */
#ifndef KINO_LIB_OVERLAY_H
#define KINO_LIB_OVERLAY_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "ipcache.h"
#include "conntrack.h"
#include "policy.h"
#include "events.h"
#include "local_delivery.h"

/* skb->pkt_type of a frame for this host (linux/if_packet.h drags in libc headers). */
#define KINO_PACKET_HOST 0

/* The node's routing configuration, or NULL (the lookup of an array's key 0 cannot fail,
 * but the verifier wants the check). */
static __always_inline const struct node_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&kino_node_config, &zero);
}

/* Whether an ipcache entry names the node hosting its prefix. */
static __always_inline int has_tunnel_endpoint(const struct ipcache_entry *e)
{
	if (e->flags & KINO_IPCACHE_F_TUNNEL_IPV6)
		return !ipv6_bytes_zero(e->tunnel_endpoint.ip6);
	return e->tunnel_endpoint.ip4 != 0;
}

/* Gives the packet its tunnel key: to the node of `peer` (IPv4 or IPv6 underlay), VNI
 * `identity`. <0 on failure. */
static __always_inline int set_tunnel_key(struct __sk_buff *skb, const struct ipcache_entry *peer,
					  __u32 identity)
{
	struct bpf_tunnel_key key = {};
	__u64 flags = 0;

	if (peer->flags & KINO_IPCACHE_F_TUNNEL_IPV6) {
		__builtin_memcpy(key.remote_ipv6, peer->tunnel_endpoint.ip6, sizeof(key.remote_ipv6));
		flags = BPF_F_TUNINFO_IPV6;
	} else {
		/* The helper takes the IPv4 address in host order. */
		key.remote_ipv4 = bpf_ntohl(peer->tunnel_endpoint.ip4);
	}
	key.tunnel_id = identity;
	key.tunnel_ttl = KINO_TUNNEL_TTL;
	return bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags);
}

/* The packet's tunnel key: 0 for an IPv4 underlay, 1 for IPv6 (the helper answers -EPROTO
 * when asked for the other family's key); <0 when it has none. */
static __always_inline int tunnel_key_of(struct __sk_buff *skb, struct bpf_tunnel_key *key)
{
	int ret = bpf_skb_get_tunnel_key(skb, key, sizeof(*key), 0);

	if (ret != -EPROTO)
		return ret;
	ret = bpf_skb_get_tunnel_key(skb, key, sizeof(*key), BPF_F_TUNINFO_IPV6);
	return ret < 0 ? ret : 1;
}

/*
 * Tunnel mode, a packet from a local pod (identity `identity`) whose peer's ipcache entry is
 * `peer` (NULL: world): encapsulated to the peer's node and redirected to kino_vxlan, or -1
 * when the stack takes it — not tunnel mode, no node hosts the destination, the key cannot
 * be set, or the packet (any of its segments, for a GSO packet) is bigger than kino_vxlan's
 * MTU: the stack then forwards it by its route via kino_vxlan, whose MTU makes it answer a
 * DF packet with "fragmentation needed" (IPv6: "packet too big") and fragment any other.
 */
static __always_inline int to_tunnel(struct __sk_buff *skb, const struct ipcache_entry *peer,
				     __u32 identity)
{
	const struct node_config *cfg = node_config();

	if (!cfg || cfg->routing_mode != KINO_ROUTING_TUNNEL || !peer || !has_tunnel_endpoint(peer))
		return -1;
	__u32 ifindex = cfg->vxlan_ifindex;
	__u32 mtu_len = 0;

	if (bpf_check_mtu(skb, ifindex, &mtu_len, 0, BPF_MTU_CHK_SEGS) != BPF_MTU_CHK_RET_SUCCESS)
		return -1;
	if (set_tunnel_key(skb, peer, identity) < 0)
		return -1;
	return bpf_redirect(ifindex, 0);
}

/* Whether a VNI may come from another node: a pod's (cluster) identity, or remote-node (a
 * node's own traffic). Reserved identities such as world (2), host (1) or unknown (0) never
 * may: a node does not speak for them. */
static __always_inline int overlay_identity_ok(__u32 identity)
{
	return identity >= KINO_IDENTITY_CLUSTER_MIN || identity == KINO_IDENTITY_REMOTE_NODE;
}

/* Whether the outer source of a received packet (its tunnel key's remote) is a known node's
 * underlay address: its ipcache identity is remote-node. */
static __always_inline int overlay_sender_known(const struct bpf_tunnel_key *key, int ipv6)
{
	union kino_addr outer = {};
	struct ipcache_entry *e;

	if (ipv6) {
		__builtin_memcpy(outer.ip6, key->remote_ipv6, sizeof(outer.ip6));
		e = ipcache_of(KINO_FAMILY_IPV6, &outer);
	} else {
		outer.ip4 = bpf_htonl(key->remote_ipv4);
		e = ipcache_of(KINO_FAMILY_IPV4, &outer);
	}
	return e && e->identity == KINO_IDENTITY_REMOTE_NODE;
}

/*
 * A decapsulated packet (either family: parse.h) for a local pod: conntrack and the pod's
 * ingress policy with `identity` (the VNI) as the peer's identity, reported as the pod's
 * to-endpoint point, then into the pod by redirect; -1 when the destination is no local pod.
 * Replies of connections the pod opened find the entry its egress point made.
 */
static __always_inline int deliver_from_overlay(struct __sk_buff *skb, struct ethhdr *eth,
						__u8 family, const struct flow4 *f, __u32 identity)
{
	struct endpoint_info *dst = local_destination(family, f);

	if (!dst)
		return -1;
	struct endpoint_metrics *m = metrics_of(dst->endpoint_id);
	int ret = enforce_ingress(skb, dst, m, identity, family, f);

	if (ret >= 0)
		return ret;
	return redirect_to_pod(skb, eth, dst, NULL, m);
}

#endif /* KINO_LIB_OVERLAY_H */

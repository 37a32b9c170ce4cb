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
 *   from_overlay    kino_vxlan ingress (#13, decapsulated packets from other nodes): the
 *                   sender and the VNI checked, then to a local pod by redirect after
 *                   conntrack and its INGRESS policy with the VNI as the peer's identity;
 *                   anything else to the stack.
 *   to_overlay      kino_vxlan egress (what the STACK routes to the tunnel: the node's own
 *                   traffic, forwarded packets): the tunnel key from the destination's
 *                   ipcache entry, unless from_container already set it.
 *   from_netdev     the underlay device's ingress in native mode (#13): a packet for a
 *                   local pod into it by redirect after conntrack and its INGRESS policy;
 *                   anything else to the stack.
 *
 * Per packet: hash lookups (endpoint, conntrack), one array lookup (enforcement), at most one
 * ipcache LPM lookup and two policy LPM lookups per enforcement point — nothing walks rules,
 * so the cost is the same with 10 or 100 000 policy entries. IPv4 and IPv6 alike: past
 * parsing, both families run the same bodies (lib/parse.h says how), except that IPv6
 * neighbour discovery is never subject to policy and a pod's neighbour solicitations are
 * answered by the datapath itself (answer_neighbour_solicitation).
 *
 * This file holds the two programs (the entry points) and their per-family branches; each
 * concern is a header of lib/, as in Cilium's bpf/lib, included in layer order (a header
 * includes only those above it):
 *
 *   kino_maps.h           the ABI: map keys and values, mirrored #[repr(C)] in Rust
 *   lib/maps.h            the pinned maps
 *   lib/metrics.h         per-endpoint counters
 *   lib/parse.h           packet headers into struct flow4 / flow6
 *   lib/ipcache.h         a peer address's identity
 *   lib/conntrack.h       connections at an enforcement point, related ICMP errors
 *   lib/policy.h          enforcement: conntrack, then the endpoint's policy
 *   lib/events.h          flow events: drops and new connections' verdicts
 *   lib/local_delivery.h  pod to pod on this node, by redirect
 *   lib/ndp.h             IPv6 neighbour discovery, the NA responder
 *   lib/overlay.h         between nodes (#13): tunnel keys, the overlay's checks
 *   lib/host_routing.h    native mode (#13): pod traffic in and out of the underlay device
 *                         without the node's IP forwarding
 *
 * Flow events (#6): every drop and every new connection an enforcement point allows is
 * reported to the kino_events ring buffer. Drop with lib/events.h's drop_*() rather than
 * drop() so the drop is reported.
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
#include "lib/maps.h"
#include "lib/metrics.h"
#include "lib/parse.h"
#include "lib/ipcache.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/local_delivery.h"
#include "lib/ndp.h"
#include "lib/overlay.h"
#include "lib/host_routing.h"

char _license[] SEC("license") = "Dual MIT/GPL";

/* from_container's flow6, per CPU: off its stack, which the inlined IPv4 and IPv6 paths share
 * with the emit_event subprogram within the verifier's 512 bytes (tc programs do not nest on
 * a CPU). Internal: not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow6);
} kino_flow6_scratch SEC(".maps");

/*
 * A packet the pod sent (either family: lib/parse.h), parsed, its source checked: to a local
 * pod by redirect after both points' policy; after the egress policy (the peer's identity
 * from the ipcache), to another node's pod through the tunnel in tunnel mode
 * (lib/overlay.h) or out of the underlay device in native mode (lib/host_routing.h),
 * anything else (the node: kino_host's gateway IP; other nodes in native
 * mode; the world; too big for the tunnel) to the stack, which routes it.
 */
static __always_inline int from_container_flow(struct __sk_buff *skb, struct ethhdr *eth,
					       __u8 family, const struct flow4 *f,
					       const struct endpoint_info *ep,
					       struct endpoint_metrics *m)
{
	int ret = deliver_local(skb, eth, family, f, ep, m);

	if (ret >= 0)
		return ret;
	struct ipcache_entry *peer = ipcache_peer(family, f, KINO_DIR_EGRESS);
	struct point pt;

	if (!enforce(skb, ep, KINO_DIR_EGRESS, peer ? peer->identity : KINO_IDENTITY_WORLD, family,
		     f, &pt, 0))
		return drop_policy(skb, m, KINO_DROP_POLICY_DENIED, ep, KINO_DIR_EGRESS,
				   KINO_OBS_FROM_ENDPOINT, &pt);
	if (pt.ct == CT_NEW) {
		ct_create(family, f, KINO_DIR_EGRESS, ep->identity, ep->endpoint_id, &pt);
		verdict_event(skb, ep, KINO_DIR_EGRESS, KINO_OBS_FROM_ENDPOINT, &pt);
	}
	ret = to_tunnel(skb, peer, ep->identity);
	if (ret >= 0)
		return ret;
	ret = to_underlay(skb, family, peer);
	if (ret >= 0)
		return ret;
	return to_stack(m);
}

/*
 * An IPv6 packet the pod sent, its source checked: neighbour discovery to the NA responder or
 * the stack (never policy); anything else as IPv4, with ICMPv6 as the protocol policy
 * matches (58: a rule for ICMP, 1, does not cover it; one for ANY does).
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
	return from_container_flow(skb, eth, KINO_FAMILY_IPV6, &f->l4, ep, m);
}

/*
 * A packet the stack sends to the pod (either family: lib/parse.h), parsed: conntrack and the
 * pod's ingress policy, the peer's identity from the ipcache. -1: deliver it.
 */
static __always_inline int to_container_flow(struct __sk_buff *skb,
					     const struct endpoint_info *ep,
					     struct endpoint_metrics *m, __u8 family,
					     const struct flow4 *f)
{
	return enforce_ingress(skb, ep, m, ipcache_peer_identity(family, f, KINO_DIR_INGRESS),
			       family, f);
}

/* An IPv6 packet the stack sends to the pod: neighbour discovery passes, anything else as
 * IPv4. -1: deliver it. */
static __always_inline int to_container_ipv6(struct __sk_buff *skb,
					     const struct endpoint_info *ep,
					     struct endpoint_metrics *m)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct flow6 f;

	if ((void *)(ip6 + 1) > data_end || parse_flow6(skb, ip6, &f) < 0)
		return drop_received(skb, m, ep, KINO_DROP_INVALID_PACKET);
	if (icmp6_is_neighbour_discovery(&f))
		return -1;
	return to_container_flow(skb, ep, m, KINO_FAMILY_IPV6, &f.l4);
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
		return from_container_flow(skb, eth, KINO_FAMILY_IPV4, &f, ep, m);
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

		if ((void *)(ip4 + 1) > data_end || parse_flow4(skb, ip4, &f) < 0)
			return drop_received(skb, m, ep, KINO_DROP_INVALID_PACKET);
		int ret = to_container_flow(skb, ep, m, KINO_FAMILY_IPV4, &f);

		if (ret >= 0)
			return ret;
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

/* A drop by from_overlay or to_overlay: no endpoint's point (counted under endpoint id 0),
 * the identity the packet carries (the VNI) reported when known. */
static __always_inline int drop_overlay(struct __sk_buff *skb, __u32 reason, __u32 identity,
					__u8 flags)
{
	return drop_event(skb, metrics_of(0), reason, 0, 0, 0, identity, 0, flags);
}

/* The decapsulated IPv6 packet of from_overlay: neighbour discovery (never sent over the
 * tunnel by a node of ours) to the stack, anything else as IPv4. -1: to the stack. */
static __always_inline int from_overlay_ipv6(struct __sk_buff *skb, struct ethhdr *eth,
					     const struct ipv6hdr *ip6, __u32 identity)
{
	__u32 slot = 0;
	struct flow6 *f = bpf_map_lookup_elem(&kino_flow6_scratch, &slot);

	if (!f || parse_flow6(skb, ip6, f) < 0)
		return drop_overlay(skb, KINO_DROP_INVALID_PACKET, identity,
				    KINO_EVENT_F_SRC_IDENTITY);
	if (icmp6_is_neighbour_discovery(f))
		return -1;
	return deliver_from_overlay(skb, eth, KINO_FAMILY_IPV6, &f->l4, identity);
}

SEC("classifier")
int from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	int ret = tunnel_key_of(skb, &key);

	if (ret < 0)
		return drop_overlay(skb, KINO_DROP_ERROR_RETRIEVING_TUNNEL_KEY, 0, 0);
	__u32 identity = key.tunnel_id;

	if (!overlay_sender_known(&key, ret))
		return drop_overlay(skb, KINO_DROP_UNKNOWN_SENDER, identity,
				    KINO_EVENT_F_SRC_IDENTITY);
	if (!overlay_identity_ok(identity))
		return drop_overlay(skb, KINO_DROP_INVALID_IDENTITY, identity,
				    KINO_EVENT_F_SRC_IDENTITY);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return drop_overlay(skb, KINO_DROP_INVALID_PACKET, identity,
				    KINO_EVENT_F_SRC_IDENTITY);
	/* The inner frame is addressed to the sending side's MAC, so the device took it for
	 * another host's: it is for this one (the stack would drop it otherwise). */
	bpf_skb_change_type(skb, KINO_PACKET_HOST);
	ret = -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = (void *)(eth + 1);
		struct flow4 f;

		if ((void *)(ip4 + 1) > data_end || parse_flow4(skb, ip4, &f) < 0)
			return drop_overlay(skb, KINO_DROP_INVALID_PACKET, identity,
					    KINO_EVENT_F_SRC_IDENTITY);
		ret = deliver_from_overlay(skb, eth, KINO_FAMILY_IPV4, &f, identity);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return drop_overlay(skb, KINO_DROP_INVALID_PACKET, identity,
					    KINO_EVENT_F_SRC_IDENTITY);
		ret = from_overlay_ipv6(skb, eth, ip6, identity);
	} else {
		return drop_overlay(skb, KINO_DROP_UNSUPPORTED_L3, identity,
				    KINO_EVENT_F_SRC_IDENTITY);
	}
	/* Not for a local pod: the node's own addresses, or to be forwarded. */
	return ret >= 0 ? ret : TC_ACT_OK;
}

SEC("classifier")
int to_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};

	/* Redirected by from_container with its key (and the pod's identity): as it is. */
	if (tunnel_key_of(skb, &key) >= 0)
		return TC_ACT_OK;

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	union kino_addr saddr = {}, daddr = {};
	__u8 family;

	if ((void *)(eth + 1) > data_end)
		return drop_overlay(skb, KINO_DROP_INVALID_PACKET, 0, 0);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = (void *)(eth + 1);

		if ((void *)(ip4 + 1) > data_end)
			return drop_overlay(skb, KINO_DROP_INVALID_PACKET, 0, 0);
		family = KINO_FAMILY_IPV4;
		saddr.ip4 = ip4->saddr;
		daddr.ip4 = ip4->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return drop_overlay(skb, KINO_DROP_INVALID_PACKET, 0, 0);
		/* The device's own link-local control traffic (MLD reports: kino_vxlan is a
		 * router's interface) has no node to go to; it is not anyone's packet to report. */
		if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
			return TC_ACT_SHOT;
		family = KINO_FAMILY_IPV6;
		__builtin_memcpy(saddr.ip6, &ip6->saddr, sizeof(saddr.ip6));
		__builtin_memcpy(daddr.ip6, &ip6->daddr, sizeof(daddr.ip6));
	} else {
		return drop_overlay(skb, KINO_DROP_UNSUPPORTED_L3, 0, 0);
	}
	/* A local pod's packet the stack routed here (fragmented, or too big for the tunnel
	 * and not DF) keeps the pod's identity; the node's own traffic, and whatever else it
	 * forwards, goes as remote-node (as Cilium sends host traffic). */
	struct endpoint_info *src = local_endpoint(family, family == KINO_FAMILY_IPV4
								   ? (const void *)&saddr.ip4
								   : (const void *)saddr.ip6);
	__u32 identity = src ? src->identity : KINO_IDENTITY_REMOTE_NODE;
	struct ipcache_entry *peer = ipcache_of(family, &daddr);

	if (!peer || !has_tunnel_endpoint(peer) || set_tunnel_key(skb, peer, identity) < 0)
		return drop_overlay(skb, KINO_DROP_NO_TUNNEL_ENDPOINT, identity,
				    KINO_EVENT_F_SRC_IDENTITY);
	return TC_ACT_OK;
}

/* A packet for a local pod that the underlay device received (native mode; either family:
 * lib/parse.h): conntrack and the pod's ingress policy, the peer's identity from the
 * ipcache, then into the pod. -1: not a local pod's, to the stack. */
static __always_inline int from_netdev_flow(struct __sk_buff *skb, __u8 family,
					    const struct flow4 *f)
{
	struct endpoint_info *dst = local_destination(family, f);

	if (!dst)
		return -1;
	struct endpoint_metrics *m = metrics_of(dst->endpoint_id);
	int ret = enforce_ingress(skb, dst, m, ipcache_peer_identity(family, f, KINO_DIR_INGRESS),
				  family, f);

	if (ret >= 0)
		return ret;
	if (decrement_ttl(skb, family) < 0)
		return -1;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	return redirect_to_pod(skb, eth, dst, NULL, m);
}

SEC("classifier")
int from_netdev(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	int ret = -1;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	/* Anything malformed, expiring or not unicast to a local pod is the stack's to handle
	 * (and to answer with ICMP): this program only shortens the path of what it forwards. */
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = (void *)(eth + 1);
		struct flow4 f;

		if ((void *)(ip4 + 1) > data_end || ip4->ttl <= 1 || parse_flow4(skb, ip4, &f) < 0)
			return TC_ACT_OK;
		ret = from_netdev_flow(skb, KINO_FAMILY_IPV4, &f);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		__u32 slot = 0;
		struct flow6 *f = bpf_map_lookup_elem(&kino_flow6_scratch, &slot);

		if (!f || (void *)(ip6 + 1) > data_end || ip6->hop_limit <= 1 ||
		    parse_flow6(skb, ip6, f) < 0 || icmp6_is_neighbour_discovery(f))
			return TC_ACT_OK;
		ret = from_netdev_flow(skb, KINO_FAMILY_IPV6, &f->l4);
	}
	return ret >= 0 ? ret : TC_ACT_OK;
}

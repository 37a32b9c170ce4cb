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
 * so the cost is the same with 10 or 100 000 policy entries. IPv4 only: IPv6 passes the
 * source check and goes to the stack unenforced (endpoints have no IPv6 addresses yet).
 *
 * Layouts of the maps are in kino_maps.h (mirrored in Rust). Flow events (#6) hook in where
 * marked.
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

/* ---- Flows ------------------------------------------------------------------------------ */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define ICMP_ECHO_REPLY   0
#define ICMP_ECHO_REQUEST 8

/* What conntrack and policy need of an IPv4 packet. */
struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;       /* ICMP echo request: identifier */
	__be16 dport;       /* ICMP echo reply: identifier */
	__be16 policy_port; /* the destination port policy matches: dport for TCP/UDP/SCTP, else 0 */
	__u8 protocol;
	__u8 tcp_flags;
	__u32 len;
};

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
	f->len = skb->len;
	if (ip4->ihl < 5)
		return -1;
	if (ip4->frag_off & bpf_htons(0x1fff))
		return 0;
	__u32 off = ETH_HLEN + ip4->ihl * 4;

	switch (ip4->protocol) {
	case IPPROTO_TCP: {
		__u8 tcp[14];

		if (bpf_skb_load_bytes(skb, off, tcp, sizeof(tcp)) < 0)
			return -1;
		__builtin_memcpy(&f->sport, &tcp[0], 2);
		__builtin_memcpy(&f->dport, &tcp[2], 2);
		f->tcp_flags = tcp[13];
		f->policy_port = f->dport;
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		f->sport = ports[0];
		f->dport = ports[1];
		f->policy_port = f->dport;
		return 0;
	}
	case IPPROTO_ICMP: {
		__u8 icmp[6]; /* type, code, checksum, identifier */

		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return -1;
		if (icmp[0] == ICMP_ECHO_REQUEST)
			__builtin_memcpy(&f->sport, &icmp[4], 2);
		else if (icmp[0] == ICMP_ECHO_REPLY)
			__builtin_memcpy(&f->dport, &icmp[4], 2);
		return 0;
	}
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

/* ---- Conntrack ---------------------------------------------------------------------------- */

#define CT_NEW         0
#define CT_ESTABLISHED 1
#define CT_REPLY       2

static __always_inline __u32 now_seconds(void)
{
	return bpf_ktime_get_ns() / 1000000000ULL;
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

/* Classifies a packet at an enforcement point of direction `direction` and accounts it;
 * *established is the connection's entry for an ESTABLISHED packet. */
static __always_inline int ct_lookup4(const struct flow4 *f, __u8 direction,
				      struct ct_entry **established)
{
	struct ct_key key = {};
	__u32 now = now_seconds();

	ct_key4(&key, f, direction, 0);
	struct ct_entry *e = ct_live(&key, now);

	if (e) {
		/* A SYN on a closing (FIN or RST seen) connection opens a new one on its tuple. */
		if (f->protocol == IPPROTO_TCP &&
		    (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
		    (e->flags & (KINO_CT_F_TX_CLOSING | KINO_CT_F_RX_CLOSING)))
			return CT_NEW;
		ct_account(e, f, 0, now);
		*established = e;
		return CT_ESTABLISHED;
	}
	ct_key4(&key, f, direction == KINO_DIR_EGRESS ? KINO_DIR_INGRESS : KINO_DIR_EGRESS, 1);
	e = ct_live(&key, now);
	if (e) {
		ct_account(e, f, 1, now);
		return CT_REPLY;
	}
	return CT_NEW;
}

/* The verdict cache of an entry as one 8-byte value (generation low, identity high). */
static __always_inline __u64 ct_policy_cache(__u32 generation, __u32 remote)
{
	return ((__u64)remote << 32) | generation;
}

/* An enforcement point's outcome: conntrack status, and what the verdict was based on. */
struct point {
	int ct;              /* CT_NEW / CT_ESTABLISHED / CT_REPLY */
	__u32 generation;    /* the endpoint's policy generation, read before the lookup */
	__u32 remote;        /* the peer's identity */
};

/* Records a new connection allowed at a point. */
static __always_inline void ct_create4(const struct flow4 *f, __u8 direction,
				       __u32 src_identity, __u32 endpoint_id,
				       const struct point *pt)
{
	struct ct_key key = {};
	struct ct_entry e = {};

	ct_key4(&key, f, direction, 0);
	e.tx_packets = 1;
	e.tx_bytes = f->len;
	e.flags = ct_tcp_flags(f, KINO_CT_F_TX_CLOSING);
	e.expires = now_seconds() + ct_lifetime(f->protocol, e.flags);
	e.src_identity = src_identity;
	e.endpoint_id = endpoint_id;
	e.policy_generation = pt->generation;
	e.remote_identity = pt->remote;
	bpf_map_update_elem(&kino_ct, &key, &e, BPF_ANY);
}

/* ---- Policy -------------------------------------------------------------------------------- */

static __always_inline void policy_account(struct policy_entry *e, __u32 len)
{
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);
}

/*
 * The verdict of endpoint `endpoint_id`'s policy in `direction` for a peer of identity
 * `remote`: one LPM lookup for the peer's identity and one for every peer (0); a DENY in
 * either wins, then an ALLOW in either, else default deny. For the compiler's entries (which
 * fold wildcard denies into every more specific entry) this is exactly the first-hit order of
 * kino.policy.v1.PolicyMapKey. 1 = allowed.
 */
static __always_inline int policy_allows(__u32 endpoint_id, __u8 direction, __u32 remote,
					 const struct flow4 *f)
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
		return 0;
	}
	struct policy_entry *any = NULL;

	if (remote != KINO_IDENTITY_UNKNOWN) {
		key.remote_identity = KINO_IDENTITY_UNKNOWN;
		any = bpf_map_lookup_elem(&kino_policy, &key);
		if (any && any->verdict != KINO_VERDICT_ALLOW) {
			policy_account(any, f->len);
			return 0;
		}
	}
	if (peer) {
		policy_account(peer, f->len);
		return 1;
	}
	if (any) {
		policy_account(any, f->len);
		return 1;
	}
	return 0;
}

/*
 * One enforcement point: the egress of the packet's source endpoint or the ingress of its
 * destination endpoint `ep`, the peer having identity `remote`. Replies of tracked
 * connections pass. Everything else passes only if the direction is not enforced or the
 * policy allows it — established connections too, so a policy change applies to running
 * connections at once; but an established connection already allowed under the endpoint's
 * current policy generation, with the same peer identity, skips the lookups (the cache in its
 * conntrack entry). Returns 1 if the packet may pass; *pt tells the caller whether to record
 * the connection, and with what.
 */
static __always_inline int enforce4(const struct endpoint_info *ep, __u8 direction, __u32 remote,
				    const struct flow4 *f, struct point *pt)
{
	struct ct_entry *e = NULL;

	pt->ct = ct_lookup4(f, direction, &e);
	pt->remote = remote;
	pt->generation = 0;
	if (pt->ct == CT_REPLY)
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

	if (enforced && !policy_allows(id, direction, remote, f))
		return 0;
	if (e)
		*(volatile __u64 *)&e->policy_generation = cache;
	return 1;
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

	if (!enforce4(src, KINO_DIR_EGRESS, dst->identity, f, &egress))
		return drop(src_metrics, KINO_DROP_POLICY_DENIED);
	struct endpoint_metrics *dst_metrics = metrics_of(dst->endpoint_id);

	if (!enforce4(dst, KINO_DIR_INGRESS, src->identity, f, &ingress))
		return drop(dst_metrics, KINO_DROP_POLICY_DENIED_INGRESS);
	/* Recorded only once both points allowed it. */
	if (egress.ct == CT_NEW)
		ct_create4(f, KINO_DIR_EGRESS, src->identity, src->endpoint_id, &egress);
	if (ingress.ct == CT_NEW)
		ct_create4(f, KINO_DIR_INGRESS, src->identity, dst->endpoint_id, &ingress);

	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, dst->node_mac, ETH_ALEN);
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
		struct flow4 f;

		if (parse_flow4(skb, ip4, &f) < 0)
			return drop(m, KINO_DROP_INVALID_PACKET);
		int ret = deliver_local_ipv4(skb, eth, &f, ep, m);

		if (ret >= 0)
			return ret;
		/* The node (kino_host's gateway IP) or beyond: the stack routes it. */
		struct point pt;

		if (!enforce4(ep, KINO_DIR_EGRESS, ipcache_identity4(f.daddr), &f, &pt))
			return drop(m, KINO_DROP_POLICY_DENIED);
		if (pt.ct == CT_NEW)
			ct_create4(&f, KINO_DIR_EGRESS, ep->identity, ep->endpoint_id, &pt);
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
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	/* IPv4 from the stack (the node, or routed from elsewhere): conntrack and ingress policy,
	 * the peer's identity from the ipcache. ARP and IPv6 pass. */
	if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip4 = (void *)(eth + 1);
		struct flow4 f;
		struct point pt;

		if ((void *)(ip4 + 1) > data_end || parse_flow4(skb, ip4, &f) < 0)
			return drop(m, KINO_DROP_INVALID_PACKET);
		__u32 remote = ipcache_identity4(f.saddr);

		if (!enforce4(ep, KINO_DIR_INGRESS, remote, &f, &pt))
			return drop(m, KINO_DROP_POLICY_DENIED_INGRESS);
		if (pt.ct == CT_NEW)
			ct_create4(&f, KINO_DIR_INGRESS, remote, ep->endpoint_id, &pt);
	}
	if (m) {
		m->to_container_packets++;
		m->to_container_bytes += skb->len;
	}
	return TC_ACT_OK;
}

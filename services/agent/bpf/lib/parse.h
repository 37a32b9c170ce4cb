/* SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only) */
/*
 * Parsing: what the datapath reads of a packet's headers. struct flow4 / flow6 are the parsed
 * tuple conntrack and policy work on (parse_flow4, parse_flow6: the L4 header after the IPv4
 * header or after up to IPV6_MAX_EXT_HEADERS IPv6 extension headers); the protocol numbers and
 * headers the uapi headers do not spell (TCP flags, ICMP/ICMPv6 types, ARP); IPv6 address
 * predicates of the source check and the NA responder.
 */
#ifndef KINO_LIB_PARSE_H
#define KINO_LIB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kino_maps.h"

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

/* An IPv6 source a pod may use whatever its address: link-local (ND, MLD) or unspecified (DAD). */
static __always_inline int ipv6_always_allowed_source(const struct in6_addr *a)
{
	if (a->in6_u.u6_addr8[0] == 0xfe && (a->in6_u.u6_addr8[1] & 0xc0) == 0x80)
		return 1;
	return !(a->in6_u.u6_addr32[0] | a->in6_u.u6_addr32[1] | a->in6_u.u6_addr32[2] |
		 a->in6_u.u6_addr32[3]);
}

/* Whether an IPv6 address in the packet is the 16 bytes `b` (an endpoint's address). */
static __always_inline int ipv6_equal(const struct in6_addr *a, const __u8 *b)
{
	const __u32 *w = (const __u32 *)b;

	return a->in6_u.u6_addr32[0] == w[0] && a->in6_u.u6_addr32[1] == w[1] &&
	       a->in6_u.u6_addr32[2] == w[2] && a->in6_u.u6_addr32[3] == w[3];
}

/* Whether 16 bytes of an IPv6 address are all zero (the unspecified address ::). */
static __always_inline int ipv6_bytes_zero(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return !(w[0] | w[1] | w[2] | w[3]);
}

/* ---- Flows ------------------------------------------------------------------------------ */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define ICMP_ECHO_REPLY   0
#define ICMP_ECHO_REQUEST 8
/* ICMP error messages: they quote (the start of) the packet that caused them. */
#define ICMP_DEST_UNREACH   3
#define ICMP_TIME_EXCEEDED  11
#define ICMP_PARAMETERPROB  12
/* The length of an ICMP(v6) error header before the quoted packet. */
#define ICMP_ERROR_HLEN     8

/* What conntrack and policy need of an IPv4 packet. */
struct flow4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;       /* ICMP echo request: identifier */
	__be16 dport;       /* ICMP echo reply: identifier */
	__be16 policy_port; /* the destination port policy matches: dport for TCP/UDP/SCTP, else 0 */
	__u8 protocol;
	__u8 tcp_flags;
	__u16 icmp_quote;   /* ICMP(v6) error: offset of the quoted packet's IP header; else 0 */
	__u32 len;
};

/* Reads the ports (and TCP flags) of a TCP, UDP or SCTP header at `off` into f (whose
 * protocol is set); -1 if it is truncated. Shared by both families. */
static __always_inline int parse_ports(struct __sk_buff *skb, __u32 off, struct flow4 *f)
{
	if (f->protocol == IPPROTO_TCP) {
		__u8 tcp[14];

		if (bpf_skb_load_bytes(skb, off, tcp, sizeof(tcp)) < 0)
			return -1;
		__builtin_memcpy(&f->sport, &tcp[0], 2);
		__builtin_memcpy(&f->dport, &tcp[2], 2);
		f->tcp_flags = tcp[13];
	} else {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return -1;
		f->sport = ports[0];
		f->dport = ports[1];
	}
	f->policy_port = f->dport;
	return 0;
}

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
	f->icmp_quote = 0;
	f->len = skb->len;
	if (ip4->ihl < 5)
		return -1;
	if (ip4->frag_off & bpf_htons(0x1fff))
		return 0;
	__u32 off = ETH_HLEN + ip4->ihl * 4;

	switch (ip4->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		return parse_ports(skb, off, f);
	case IPPROTO_ICMP: {
		__u8 icmp[6]; /* type, code, checksum, identifier */

		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return -1;
		if (icmp[0] == ICMP_ECHO_REQUEST)
			__builtin_memcpy(&f->sport, &icmp[4], 2);
		else if (icmp[0] == ICMP_ECHO_REPLY)
			__builtin_memcpy(&f->dport, &icmp[4], 2);
		else if (icmp[0] == ICMP_DEST_UNREACH || icmp[0] == ICMP_TIME_EXCEEDED ||
			 icmp[0] == ICMP_PARAMETERPROB)
			f->icmp_quote = off + ICMP_ERROR_HLEN;
		return 0;
	}
	default:
		return 0;
	}
}

/* ---- IPv6 -------------------------------------------------------------------------------- */

/* ICMPv6 types (RFC 4443, 4861, 2710, 3810). */
#define ICMPV6_DEST_UNREACH      1
#define ICMPV6_PKT_TOOBIG        2
#define ICMPV6_TIME_EXCEED       3
#define ICMPV6_PARAMPROB         4
#define ICMPV6_ECHO_REQUEST      128
#define ICMPV6_ECHO_REPLY        129
#define ICMPV6_MLD_QUERY         130
#define ICMPV6_MLD_REPORT        131
#define ICMPV6_MLD_DONE          132
#define ICMPV6_ROUTER_SOLICIT    133
#define ICMPV6_ROUTER_ADVERT     134
#define ICMPV6_NEIGHBOUR_SOLICIT 135
#define ICMPV6_NEIGHBOUR_ADVERT  136
#define ICMPV6_REDIRECT          137
#define ICMPV6_MLD2_REPORT       143
/* Extension headers walked to find the L4 header (Cilium's IPV6_MAX_HEADERS); a packet with
 * more is dropped as invalid: it cannot be classified. */
#define IPV6_MAX_EXT_HEADERS 4

/*
 * What conntrack and policy need of an IPv6 packet. `l4` holds everything but the addresses
 * (its saddr/daddr stay 0), so the helpers that read only the ports, protocol, TCP flags and
 * length (ct_account, policy_allows, ...) serve both families.
 */
struct flow6 {
	union kino_addr saddr;
	union kino_addr daddr;
	struct flow4 l4;     /* protocol = the upper-layer header after the extension headers */
	__u32 l4_off;        /* offset of the L4 header in the packet */
	__u8 icmp6_type;     /* when l4.protocol is ICMPv6 (0 is no ICMPv6 type) */
	__u8 icmp6_code;
};

/*
 * Both families' shared bodies (conntrack, enforcement, local delivery, the programs' tails)
 * take a parsed packet as `__u8 family, const struct flow4 *f`: for IPv4 the flow4 itself, for
 * IPv6 the l4 of its flow6, whose addresses flow6_of(f) reaches. Each caller passes a
 * constant family and the bodies are inlined, so every copy keeps only its family's code (and
 * flow6_of folds into the flow6 the caller holds): one body, no cost at run time.
 */
static __always_inline const struct flow6 *flow6_of(const struct flow4 *f)
{
	return (const struct flow6 *)((const char *)f - __builtin_offsetof(struct flow6, l4));
}

static __always_inline int ipv6_ext_header(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_FRAGMENT || nexthdr == IPPROTO_AH || nexthdr == IPPROTO_DSTOPTS;
}

/*
 * Reads an IPv6 packet's upper-layer header, walking up to IPV6_MAX_EXT_HEADERS extension
 * headers (hop-by-hop, routing, fragment, AH, destination options); -1 if a header is
 * truncated or there are more. A non-first fragment carries no L4 header: its ports are 0
 * (only port-wildcard rules match it). ICMPv6 echo: the identifier is the request's sport
 * and the reply's dport, as for ICMP.
 */
static __always_inline int parse_flow6(struct __sk_buff *skb, const struct ipv6hdr *ip6,
				       struct flow6 *f)
{
	__u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
	__u8 nexthdr = ip6->nexthdr;

	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memcpy(f->saddr.ip6, &ip6->saddr, sizeof(f->saddr.ip6));
	__builtin_memcpy(f->daddr.ip6, &ip6->daddr, sizeof(f->daddr.ip6));
	f->l4.len = skb->len;
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (!ipv6_ext_header(nexthdr))
			break;
		__u8 ext[4]; /* next header, length, (fragment: offset and flags) */

		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return -1;
		if (nexthdr == IPPROTO_FRAGMENT) {
			if (((ext[2] << 8) | ext[3]) & 0xfff8) {
				/* Not the first fragment: no L4 header here. */
				f->l4.protocol = ext[0];
				return 0;
			}
			off += 8;
		} else if (nexthdr == IPPROTO_AH) {
			off += ((__u32)ext[1] + 2) * 4;
		} else {
			off += ((__u32)ext[1] + 1) * 8;
		}
		nexthdr = ext[0];
	}
	if (ipv6_ext_header(nexthdr))
		return -1;
	f->l4.protocol = nexthdr;
	f->l4_off = off;
	switch (nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		return parse_ports(skb, off, &f->l4);
	case IPPROTO_ICMPV6: {
		__u8 icmp[6]; /* type, code, checksum, identifier */

		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return -1;
		f->icmp6_type = icmp[0];
		f->icmp6_code = icmp[1];
		if (icmp[0] == ICMPV6_ECHO_REQUEST)
			__builtin_memcpy(&f->l4.sport, &icmp[4], 2);
		else if (icmp[0] == ICMPV6_ECHO_REPLY)
			__builtin_memcpy(&f->l4.dport, &icmp[4], 2);
		else if (icmp[0] >= ICMPV6_DEST_UNREACH && icmp[0] <= ICMPV6_PARAMPROB)
			f->l4.icmp_quote = off + ICMP_ERROR_HLEN;
		return 0;
	}
	default:
		return 0;
	}
}

#endif /* KINO_LIB_PARSE_H */

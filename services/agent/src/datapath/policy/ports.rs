//! Port range splitting: the fewest aligned prefixes that cover a port range exactly, which is
//! how a compiled key with a range becomes trie prefixes (`dport` is matched bit by bit).

/// The fewest prefixes `(first port, prefix bits)` covering exactly `first..=last`
/// (`first` ≥ 1): at most 30, one for a single port.
pub fn port_prefixes(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut start, end) = (u32::from(first), u32::from(last));
    while start <= end {
        // The largest aligned block starting at `start` that ends within `end`.
        let mut size = if start == 0 {
            1 << 16
        } else {
            start & start.wrapping_neg()
        };
        while start + size - 1 > end {
            size >>= 1;
        }
        out.push((start as u16, (16 - size.trailing_zeros()) as u8));
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(prefixes: &[(u16, u8)]) -> Vec<u32> {
        let mut ports: Vec<u32> = prefixes
            .iter()
            .flat_map(|(start, bits)| {
                let size = 1u32 << (16 - u32::from(*bits));
                (u32::from(*start)..u32::from(*start) + size).collect::<Vec<_>>()
            })
            .collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn port_ranges_become_exact_prefix_sets() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_prefixes(8000, 8009), vec![(8000, 13), (8008, 15)]);
        assert_eq!(port_prefixes(1, 65535).len(), 16);
        for (first, last) in [
            (1, 1),
            (1, 79),
            (81, 1000),
            (1024, 65535),
            (8000, 8080),
            (65535, 65535),
            (3, 65534),
            (12345, 23456),
        ] {
            let prefixes = port_prefixes(first, last);
            assert!(prefixes.len() <= 30, "{first}-{last}: {}", prefixes.len());
            assert_eq!(
                covered(&prefixes),
                (u32::from(first)..=u32::from(last)).collect::<Vec<_>>(),
                "{first}-{last}"
            );
            for (start, bits) in &prefixes {
                let size = 1u32 << (16 - u32::from(*bits));
                assert_eq!(u32::from(*start) % size, 0, "aligned");
            }
        }
    }
}

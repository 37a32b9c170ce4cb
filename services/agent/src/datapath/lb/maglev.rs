//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4), as Cilium's
//! `loadBalancer.algorithm=maglev`: every backend has a permutation of the table's M slots
//! (offset and skip from two hashes of its name), and the backends take turns claiming their
//! next preferred free slot until the table is full. Every node computes the same table from
//! the same backends, and removing one of N backends moves about 1/N of the slots — the
//! others keep theirs. Weights: in each round a backend earns its weight and claims a slot
//! per `max weight` earned, so slots are shared in proportion to weights (equal weights: one
//! claim each per round, the paper's algorithm exactly).
//!
//! Pure: no kernel, so it is unit-tested here; the maps hold its output.

/// Default table size: a prime, and at most [`super::super::abi::LB_MAGLEV_CHUNK`] slots so
/// a table is one map value — one 4 KiB kernel allocation (value 4000 B + key + the hash
/// map's element header). 10 000 frontends' tables take 10 000 × 4 KiB = 41 MB (40 MiB).
/// The paper asks M ≫ N (M ≥ 100 N keeps backends within ~1 % of their share): 997 serves
/// services of up to ~10 backends that well; raise it for larger services.
pub const DEFAULT_TABLE_SIZE: u32 = 997;
/// Smallest table size accepted (Cilium's smallest).
pub const MIN_TABLE_SIZE: u32 = 251;
/// Largest table size accepted (Cilium's largest but one; backend positions fit 16 bits).
pub const MAX_TABLE_SIZE: u32 = 65_521;

/// A table size that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--maglev-table-size {0} is not a prime between {MIN_TABLE_SIZE} and {MAX_TABLE_SIZE}; \
     Maglev needs a prime (e.g. 251, 509, 997, 2039, 4093, 16381)"
)]
pub struct TableSizeError(pub u32);

/// Checks a table size: a prime in [`MIN_TABLE_SIZE`]..=[`MAX_TABLE_SIZE`].
pub fn validate_table_size(m: u32) -> Result<(), TableSizeError> {
    if (MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&m) && is_prime(m) {
        Ok(())
    } else {
        Err(TableSizeError(m))
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// FNV-1a (64 bit) of `bytes` after `seed`: stable across nodes and agent versions (std's
/// hasher is not).
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV's low bits alone are weak for a modulus.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The Maglev table of `m` slots over `backends` (name, weight ≥ 1): each slot holds the
/// index of its backend. Empty when there is no backend.
pub fn table<N: AsRef<[u8]>>(backends: &[(N, u32)], m: u32) -> Vec<u32> {
    let m = m as u64;
    if backends.is_empty() || m == 0 {
        return Vec::new();
    }
    let permutation: Vec<(u64, u64)> = backends
        .iter()
        .map(|(name, _)| {
            let name = name.as_ref();
            let offset = fnv1a(0x6f66_6673_6574, name) % m;
            let skip = fnv1a(0x736b_6970, name) % (m - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let weights: Vec<u64> = backends
        .iter()
        .map(|(_, w)| u64::from((*w).max(1)))
        .collect();
    let max_weight = *weights.iter().max().expect("not empty");
    let mut next = vec![0u64; backends.len()];
    let mut credit = vec![0u64; backends.len()];
    let mut slots = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    loop {
        for i in 0..backends.len() {
            credit[i] += weights[i];
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                let (offset, skip) = permutation[i];
                loop {
                    let c = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if slots[c] == u32::MAX {
                        slots[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    return slots;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| (format!("10.0.{}.{}:8080", i / 250, i % 250 + 1), 1))
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for slot in table {
            counts[*slot as usize] += 1;
        }
        counts
    }

    #[test]
    fn the_table_is_full_and_shared_evenly() {
        let backends = names(10);
        let table = table(&backends, DEFAULT_TABLE_SIZE);
        assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
        // Round-robin claims: each backend holds floor or ceil of M / N.
        for (i, count) in counts(&table, 10).into_iter().enumerate() {
            assert!(
                (99..=100).contains(&count),
                "backend {i} holds {count} slots"
            );
        }
    }

    #[test]
    fn the_fill_follows_the_papers_permutations() {
        // The paper's loop written out the obvious way: backend i claims, in turn, the first
        // free slot of its permutation (offset + j * skip) mod M.
        let backends = names(3);
        let m = 251u64;
        let mut expected = vec![u32::MAX; m as usize];
        let mut next = [0u64; 3];
        let mut filled = 0;
        'fill: loop {
            for i in 0..3 {
                let name = backends[i].0.as_bytes();
                let offset = fnv1a(0x6f66_6673_6574, name) % m;
                let skip = fnv1a(0x736b_6970, name) % (m - 1) + 1;
                let mut c = (offset + next[i] * skip) % m;
                while expected[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                expected[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        assert_eq!(table(&backends, 251), expected);
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_slots() {
        let n = 10;
        let backends = names(n);
        let before = table(&backends, DEFAULT_TABLE_SIZE);
        let removed = 4;
        let mut fewer = backends.clone();
        fewer.remove(removed);
        let after = table(&fewer, DEFAULT_TABLE_SIZE);
        // Slots that changed owner although their owner stayed.
        let index_after = |i: u32| if i as usize > removed { i - 1 } else { i };
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b as usize != removed && index_after(**b) != **a)
            .count();
        let lost = before.iter().filter(|b| **b as usize == removed).count();
        let m = DEFAULT_TABLE_SIZE as usize;
        // The removed backend's ~M/N slots must move; of the others' slots only a few do
        // (the paper measures a small fraction; ≤ 1/N of M here).
        assert!((m / n - 5..=m / n + 5).contains(&lost), "lost {lost}");
        assert!(
            moved <= m / n,
            "{moved} of {m} slots of staying backends moved"
        );
        let total = moved + lost;
        assert!(
            total <= 2 * m / n,
            "removing 1 of {n} moved {total} of {m} slots"
        );
    }

    #[test]
    fn weights_share_the_slots_in_proportion() {
        let backends = vec![
            ("a:1".to_owned(), 1),
            ("b:1".to_owned(), 3),
            ("c:1".to_owned(), 6),
        ];
        let table = table(&backends, 997);
        let counts = counts(&table, 3);
        for (i, (_, weight)) in backends.iter().enumerate() {
            let expected = 997.0 * f64::from(*weight) / 10.0;
            let got = counts[i] as f64;
            assert!(
                (got - expected).abs() <= expected * 0.02 + 2.0,
                "backend {i} of weight {weight}: {got} slots, expected ~{expected}"
            );
        }
    }

    #[test]
    fn tables_are_the_same_on_every_node() {
        let backends = names(7);
        assert_eq!(table(&backends, 509), table(&backends.clone(), 509));
        assert!(table::<&str>(&[], 509).is_empty());
        assert_eq!(table(&[("only", 5)], 251), vec![0; 251]);
    }

    #[test]
    fn table_sizes_must_be_primes_in_range() {
        for good in [251, 509, 997, 1021, 2039, 4093, 16381, 65521] {
            assert_eq!(validate_table_size(good), Ok(()), "{good}");
        }
        for bad in [0, 1, 250, 1000, 65_537, 131_071, 16_384] {
            assert!(validate_table_size(bad).is_err(), "{bad}");
        }
        assert!(
            validate_table_size(1000)
                .unwrap_err()
                .to_string()
                .contains("not a prime")
        );
    }

    #[test]
    fn the_default_table_of_ten_thousand_frontends_stays_well_under_100_mb() {
        validate_table_size(DEFAULT_TABLE_SIZE).expect("the default is valid");
        // One map value per table at the default size: the value, the 4-byte key rounded to
        // 8, the kernel's hash element header (48 bytes) and its allocator's list node (8).
        let chunk = crate::datapath::abi::LB_MAGLEV_CHUNK;
        assert!(DEFAULT_TABLE_SIZE as usize <= chunk);
        let element = 4 * chunk + 8 + 48 + 8;
        assert!(
            element <= 4096,
            "an element ({element} B) fits one 4 KiB allocation"
        );
        let total = 10_000 * 4096;
        assert!(total < 50_000_000, "10 000 tables take {total} bytes");
    }
}

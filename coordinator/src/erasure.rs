//! Erasure parameters per chunk (F11): the configured `k + m` when the grid is big enough,
//! otherwise the best the grid can do while keeping as much loss tolerance as possible, down to
//! plain replication (`k = 1`).

/// How many nodes the configured coding wants (one packet per node): with fewer up,
/// [`choose_erasure`] narrows it.
pub fn width(default_k: u8, default_m: u8) -> usize {
    usize::from(default_k.max(1)) + usize::from(default_m)
}

/// The `(k, m)` for a chunk when `up_nodes` nodes can take packets, or `None` when none can.
///
/// With enough nodes the defaults are used. Otherwise the tolerance `m' = min(m, up - 1)` is
/// kept and the data packets shrink to `k' = up - m'` (one packet per node, so losing any `m'`
/// nodes loses nothing). `k' = 1` means every packet is a full replica.
pub fn choose_erasure(default_k: u8, default_m: u8, up_nodes: usize) -> Option<(u8, u8)> {
    let k = default_k.max(1);
    let want = width(default_k, default_m);
    if up_nodes == 0 {
        return None;
    }
    if up_nodes >= want {
        return Some((k, default_m));
    }
    // up_nodes < k + m <= 510 here, so every value below fits in a u8.
    let m = usize::from(default_m).min(up_nodes - 1);
    let k = up_nodes - m;
    Some((k as u8, m as u8))
}

/// Packet size for a blob of `blob_bytes` split into `k` data packets: `ceil(blob / k)` rounded
/// up to an even, non-zero number, because reed-solomon-simd needs even, non-empty shards.
pub fn shard_bytes(blob_bytes: u64, k: u8) -> u64 {
    let k = u64::from(k.max(1));
    let per = blob_bytes.div_ceil(k).max(2);
    per + (per % 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_grids_degrade_to_replication_keeping_tolerance() {
        assert_eq!(choose_erasure(4, 2, 0), None);
        assert_eq!(choose_erasure(4, 2, 1), Some((1, 0)));
        assert_eq!(choose_erasure(4, 2, 2), Some((1, 1)));
        assert_eq!(choose_erasure(4, 2, 3), Some((1, 2)));
        assert_eq!(choose_erasure(4, 2, 5), Some((3, 2)));
        assert_eq!(choose_erasure(4, 2, 6), Some((4, 2)));
        assert_eq!(choose_erasure(4, 2, 60), Some((4, 2)));
        assert_eq!(choose_erasure(1, 0, 3), Some((1, 0)));
    }

    #[test]
    fn shard_sizes_are_even_and_cover_the_blob() {
        assert_eq!(shard_bytes(0, 4), 2);
        assert_eq!(shard_bytes(1, 4), 2);
        assert_eq!(shard_bytes(8, 4), 2);
        assert_eq!(shard_bytes(9, 4), 4);
        assert_eq!(shard_bytes(1 << 20, 4), 1 << 18);
        assert_eq!(shard_bytes(7, 1), 8);
    }

    proptest! {
        #[test]
        fn erasure_fits_the_grid(k in 1u8..16, m in 0u8..8, up in 0usize..40) {
            match choose_erasure(k, m, up) {
                None => prop_assert_eq!(up, 0),
                Some((k2, m2)) => {
                    prop_assert!(k2 >= 1);
                    prop_assert!(usize::from(k2) + usize::from(m2) <= up.max(usize::from(k) + usize::from(m)));
                    prop_assert!(usize::from(k2) + usize::from(m2) <= up);
                    prop_assert_eq!(usize::from(m2), usize::from(m).min(up - 1));
                }
            }
        }

        #[test]
        fn shards_hold_the_blob(blob in 0u64..(1 << 26), k in 1u8..20) {
            let s = shard_bytes(blob, k);
            prop_assert!(s >= 2 && s.is_multiple_of(2));
            prop_assert!(s * u64::from(k) >= blob);
            prop_assert!(s * u64::from(k) < blob + 2 * u64::from(k) + 2);
        }
    }
}

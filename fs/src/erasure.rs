//! Reed-Solomon packets (reed-solomon-simd): a padded blob becomes k data packets (its bytes,
//! zero-extended to `k × shard_bytes`, cut in k) and m parity packets; any k of the k + m
//! restore it. With `k == 1` every packet is a full replica of the blob.
//!
//! The coordinator chooses `shard_bytes` (it must be even, non-zero, and at least
//! `ceil(blob / k)`); [`shard_bytes_for`] is the smallest valid choice.

use std::cell::RefCell;

use bytes::Bytes;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Errors of erasure coding.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// The parameters cannot hold this blob or are not supported.
    #[error("invalid erasure parameters k={k} m={m} shard_bytes={shard_bytes}: {reason}")]
    Params {
        /// Data packets.
        k: u8,
        /// Parity packets.
        m: u8,
        /// Packet size.
        shard_bytes: u64,
        /// What is wrong.
        reason: String,
    },
    /// Fewer than k usable packets.
    #[error("need {k} packets to decode, have {have}")]
    NotEnough {
        /// Needed.
        k: u8,
        /// Usable.
        have: usize,
    },
    /// A packet has the wrong size or index.
    #[error("bad packet {index}: {reason}")]
    BadPacket {
        /// Packet index.
        index: u8,
        /// What is wrong.
        reason: String,
    },
    /// The codec failed.
    #[error("reed-solomon: {0}")]
    Codec(#[from] reed_solomon_simd::Error),
}

/// Validated erasure parameters of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErasureParams {
    k: u8,
    m: u8,
    shard_bytes: usize,
}

/// Smallest valid packet size for a blob of `blob_len` bytes split in `k`: even, non-zero.
pub fn shard_bytes_for(blob_len: usize, k: u8) -> usize {
    let per = blob_len.div_ceil(usize::from(k.max(1))).max(2);
    per + per % 2
}

impl ErasureParams {
    /// Check `k`, `m` and `shard_bytes`.
    pub fn new(k: u8, m: u8, shard_bytes: u64) -> Result<Self, ErasureError> {
        let bad = |reason: &str| ErasureError::Params {
            k,
            m,
            shard_bytes,
            reason: reason.into(),
        };
        if k == 0 {
            return Err(bad("k must be at least 1"));
        }
        if shard_bytes == 0 || !shard_bytes.is_multiple_of(2) {
            return Err(bad("shard_bytes must be even and non-zero"));
        }
        let shard = usize::try_from(shard_bytes).map_err(|_| bad("shard_bytes too large"))?;
        if k > 1 && m > 0 && !ReedSolomonEncoder::supports(k.into(), m.into()) {
            return Err(bad("unsupported shard counts"));
        }
        Ok(Self {
            k,
            m,
            shard_bytes: shard,
        })
    }

    /// Data packets.
    pub fn k(&self) -> u8 {
        self.k
    }

    /// Parity packets.
    pub fn m(&self) -> u8 {
        self.m
    }

    /// Packet size.
    pub fn shard_bytes(&self) -> usize {
        self.shard_bytes
    }

    /// Total packets.
    pub fn total(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    /// Bytes the k data packets hold.
    pub fn capacity(&self) -> usize {
        usize::from(self.k) * self.shard_bytes
    }
}

/// Bytes the packets of a `padded_len`-byte blob take laid out back to back by
/// [`encode_in_place`] with the smallest valid packet size: one packet for replication, else
/// k + m.
pub fn encoded_len(padded_len: usize, k: u8, m: u8) -> usize {
    let shard = shard_bytes_for(padded_len, k);
    if k <= 1 {
        shard
    } else {
        (usize::from(k) + usize::from(m)) * shard
    }
}

/// A chunk's k + m packets, back to back in one shared buffer; each packet is a cheap
/// reference-counted slice of it, so sending a packet copies nothing and the buffer is freed
/// when the last packet is dropped.
#[derive(Debug, Clone)]
pub struct Encoded {
    buf: Bytes,
    params: ErasureParams,
}

impl Encoded {
    /// Packet `index` (in `0..k + m`). With replication every index is the same bytes.
    pub fn packet(&self, index: usize) -> Option<Bytes> {
        if index >= self.params.total() {
            return None;
        }
        let s = self.params.shard_bytes;
        let at = if self.params.k == 1 { 0 } else { index * s };
        Some(self.buf.slice(at..at + s))
    }

    /// Number of packets.
    pub fn count(&self) -> usize {
        self.params.total()
    }

    /// Bytes held in memory for all packets.
    pub fn buffer_len(&self) -> usize {
        self.buf.len()
    }
}

thread_local! {
    /// Per-thread encoder: its work buffer (k + m packets) is reused between chunks instead
    /// of being allocated and faulted in for each one.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
}

/// Turn a padded blob into its packets in its own buffer: zero-extend it to k × shard_bytes
/// (the data packets), then append the m parity packets. When `blob` has the capacity (see
/// [`encoded_len`] and [`crate::packet::seal_chunk_for`]) nothing is reallocated or copied.
pub fn encode_in_place(blob: Vec<u8>, p: ErasureParams) -> Result<Encoded, ErasureError> {
    encode_in_place_with(blob, p, Bytes::from)
}

/// [`encode_in_place`], freezing the buffer with `freeze` (for example into pooled
/// [`Bytes`] that hand the buffer back for reuse when the last packet is dropped).
pub fn encode_in_place_with(
    mut blob: Vec<u8>,
    p: ErasureParams,
    freeze: impl FnOnce(Vec<u8>) -> Bytes,
) -> Result<Encoded, ErasureError> {
    if blob.len() > p.capacity() {
        return Err(ErasureError::Params {
            k: p.k,
            m: p.m,
            shard_bytes: p.shard_bytes as u64,
            reason: format!("blob of {} bytes does not fit", blob.len()),
        });
    }
    let s = p.shard_bytes;
    let k = usize::from(p.k);
    if k == 1 {
        blob.resize(s, 0);
        return Ok(Encoded {
            buf: freeze(blob),
            params: p,
        });
    }
    blob.reserve_exact(p.total() * s - blob.len());
    blob.resize(k * s, 0);
    if p.m > 0 {
        ENCODER.with(|cell| -> Result<(), ErasureError> {
            let mut cell = cell.borrow_mut();
            let enc = match cell.as_mut() {
                Some(enc) => {
                    enc.reset(k, p.m.into(), s)?;
                    enc
                }
                None => cell.insert(ReedSolomonEncoder::new(k, p.m.into(), s)?),
            };
            for i in 0..k {
                enc.add_original_shard(&blob[i * s..(i + 1) * s])?;
            }
            let result = enc.encode()?;
            for r in result.recovery_iter() {
                blob.extend_from_slice(r);
            }
            Ok(())
        })?;
    }
    Ok(Encoded {
        buf: freeze(blob),
        params: p,
    })
}

/// Split `blob` into k + m packets, in index order (copies; see [`encode_in_place`]).
pub fn encode(blob: &[u8], p: ErasureParams) -> Result<Vec<Vec<u8>>, ErasureError> {
    let e = encode_in_place(blob.to_vec(), p)?;
    Ok((0..e.count())
        .filter_map(|i| e.packet(i))
        .map(|b| b.to_vec())
        .collect())
}

/// Restore the k data packets' bytes (`k × shard_bytes`, blob first) from any k packets given
/// as `(index, bytes)`. Extra packets are ignored; duplicates count once.
pub fn decode(p: ErasureParams, packets: &[(u8, &[u8])]) -> Result<Vec<u8>, ErasureError> {
    let mut have: Vec<Option<&[u8]>> = vec![None; p.total()];
    for &(index, bytes) in packets {
        let bad = |reason: String| ErasureError::BadPacket { index, reason };
        let slot = have
            .get_mut(usize::from(index))
            .ok_or_else(|| bad("index out of range".into()))?;
        if bytes.len() != p.shard_bytes {
            return Err(bad(format!(
                "{} bytes, expected {}",
                bytes.len(),
                p.shard_bytes
            )));
        }
        *slot = Some(bytes);
    }
    let count = have.iter().flatten().count();
    if count < usize::from(p.k) {
        return Err(ErasureError::NotEnough {
            k: p.k,
            have: count,
        });
    }
    if p.k == 1 {
        let first = have
            .iter()
            .flatten()
            .next()
            .expect("invariant: count >= k = 1");
        return Ok(first.to_vec());
    }
    let k = usize::from(p.k);
    let mut out = vec![0u8; p.capacity()];
    let missing: Vec<usize> = (0..k).filter(|i| have[*i].is_none()).collect();
    for (i, s) in have[..k].iter().enumerate() {
        if let Some(s) = s {
            out[i * p.shard_bytes..(i + 1) * p.shard_bytes].copy_from_slice(s);
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let mut dec = ReedSolomonDecoder::new(k, p.m.into(), p.shard_bytes)?;
    for (i, s) in have.iter().enumerate() {
        match s {
            Some(s) if i < k => dec.add_original_shard(i, s)?,
            Some(s) => dec.add_recovery_shard(i - k, s)?,
            None => {}
        }
    }
    let result = dec.decode()?;
    for i in missing {
        let s = result.restored_original(i).ok_or(ErasureError::NotEnough {
            k: p.k,
            have: count,
        })?;
        out[i * p.shard_bytes..(i + 1) * p.shard_bytes].copy_from_slice(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn every_k_subset_of_4_plus_2_decodes() {
        let data = blob(10_001);
        let p = ErasureParams::new(4, 2, shard_bytes_for(data.len(), 4) as u64).unwrap();
        let packets = encode(&data, p).unwrap();
        assert_eq!(packets.len(), 6);
        let mut subsets = 0;
        for mask in 0u32..64 {
            let kept: Vec<(u8, &[u8])> = (0..6)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| (i as u8, packets[i].as_slice()))
                .collect();
            let r = decode(p, &kept);
            if kept.len() >= 4 {
                let out = r.unwrap();
                assert_eq!(&out[..data.len()], &data[..], "mask {mask:06b}");
                assert!(out[data.len()..].iter().all(|b| *b == 0));
                subsets += 1;
            } else {
                assert!(
                    matches!(r, Err(ErasureError::NotEnough { k: 4, .. })),
                    "mask {mask:06b}"
                );
            }
        }
        assert_eq!(subsets, 15 + 6 + 1);
    }

    /// The in-place encoder must produce the same packets as a plain split plus
    /// reed-solomon-simd's one-shot encoder, for every chunk (its per-thread encoder is reset
    /// between chunks of different shapes), without growing a buffer sized by `encoded_len`.
    #[test]
    fn in_place_matches_reference_and_keeps_the_buffer() {
        for (len, k, m) in [
            (10_001, 4, 2),
            (4096, 4, 2),
            (7, 3, 0),
            (70_000, 2, 3),
            (5000, 1, 2),
        ] {
            let data = blob(len);
            let p = ErasureParams::new(k, m, shard_bytes_for(len, k) as u64).unwrap();
            let mut buf = Vec::with_capacity(encoded_len(len, k, m));
            buf.extend_from_slice(&data);
            let ptr = buf.as_ptr();
            let e = encode_in_place(buf, p).unwrap();
            assert_eq!(e.count(), usize::from(k + m));
            assert_eq!(
                e.packet(0).unwrap().as_ptr(),
                ptr,
                "reallocated for {len}/{k}/{m}"
            );
            assert!(e.packet(e.count()).is_none());
            let s = p.shard_bytes();
            let mut padded = data.clone();
            padded.resize(usize::from(k) * s, 0);
            let originals: Vec<&[u8]> = padded.chunks(s).collect();
            for (i, want) in originals.iter().enumerate() {
                assert_eq!(&e.packet(i).unwrap()[..], *want);
            }
            if k > 1 && m > 0 {
                let rec = reed_solomon_simd::encode(k.into(), m.into(), &originals).unwrap();
                for (j, r) in rec.iter().enumerate() {
                    assert_eq!(&e.packet(usize::from(k) + j).unwrap()[..], &r[..]);
                }
            }
            let all: Vec<(u8, Vec<u8>)> = (0..e.count())
                .map(|i| (i as u8, e.packet(i).unwrap().to_vec()))
                .collect();
            let last_k: Vec<(u8, &[u8])> = all[all.len() - usize::from(k)..]
                .iter()
                .map(|(i, b)| (*i, &b[..]))
                .collect();
            assert_eq!(&decode(p, &last_k).unwrap()[..len], &data[..]);
        }
    }

    #[test]
    fn replication_every_packet_is_the_blob() {
        let data = blob(5000);
        let p = ErasureParams::new(1, 2, 5000).unwrap();
        let packets = encode(&data, p).unwrap();
        assert_eq!(packets.len(), 3);
        assert!(packets.iter().all(|s| s == &data));
        assert_eq!(decode(p, &[(2, &packets[2])]).unwrap(), data);
        assert!(matches!(
            decode(p, &[]),
            Err(ErasureError::NotEnough { .. })
        ));
    }

    #[test]
    fn rejects_bad_params_and_packets() {
        assert!(ErasureParams::new(0, 2, 64).is_err());
        assert!(ErasureParams::new(4, 2, 63).is_err());
        assert!(ErasureParams::new(4, 2, 0).is_err());
        let p = ErasureParams::new(2, 1, 10).unwrap();
        assert!(encode(&blob(21), p).is_err());
        let packets = encode(&blob(20), p).unwrap();
        assert!(matches!(
            decode(p, &[(0, &packets[0]), (7, &packets[1])]),
            Err(ErasureError::BadPacket { index: 7, .. })
        ));
        assert!(matches!(
            decode(p, &[(0, &packets[0][..4]), (1, &packets[1])]),
            Err(ErasureError::BadPacket { index: 0, .. })
        ));
        // No parity: plain split.
        let p0 = ErasureParams::new(3, 0, 8).unwrap();
        let s = encode(&blob(24), p0).unwrap();
        let all: Vec<(u8, &[u8])> = s
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u8, &v[..]))
            .collect();
        assert_eq!(decode(p0, &all).unwrap(), blob(24));
        assert_eq!(shard_bytes_for(10_001, 4), 2502);
        assert_eq!(shard_bytes_for(0, 4), 2);
    }
}

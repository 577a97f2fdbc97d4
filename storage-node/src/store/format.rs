//! The on-disk format of one packet file.
//!
//! ```text
//! offset  size  field
//! 0       4     magic  b"GBPK"
//! 4       2     format version (u16 LE) = FORMAT_VERSION
//! 6       8     data length in bytes (u64 LE)
//! 14      32    BLAKE3 of the data
//! 46      n     data
//! ```
//! The checksum covers the data only; a damaged header shows up as a bad magic, version or
//! length, or as a checksum mismatch.

/// Packet file magic.
pub const MAGIC: [u8; 4] = *b"GBPK";
/// Version of the packet file format; bumped (with a migration) if the layout changes.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 4 + 2 + 8 + 32;

/// A decoded packet file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the data that follows.
    pub data_len: u64,
    /// BLAKE3 of that data.
    pub checksum: [u8; 32],
}

impl Header {
    /// The header for `data`.
    pub fn for_data(data: &[u8]) -> Self {
        Self {
            data_len: data.len() as u64,
            checksum: *blake3::hash(data).as_bytes(),
        }
    }

    /// Encode.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[6..14].copy_from_slice(&self.data_len.to_le_bytes());
        h[14..46].copy_from_slice(&self.checksum);
        h
    }

    /// Decode and check magic and version.
    pub fn decode(h: &[u8]) -> Result<Self, String> {
        let h: &[u8; HEADER_LEN] = h
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("file shorter than the {HEADER_LEN}-byte header"))?;
        if h[0..4] != MAGIC {
            return Err(format!("bad magic {:02x?}", &h[0..4]));
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        if version != FORMAT_VERSION {
            return Err(format!("unknown packet format version {version}"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[6..14]);
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&h[14..46]);
        Ok(Self {
            data_len: u64::from_le_bytes(len),
            checksum,
        })
    }

    /// Size of the whole file for this header.
    pub fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.data_len
    }
}

/// Verify `data` against `header`, returning a reason on mismatch.
pub fn verify(header: &Header, data: &[u8]) -> Result<(), String> {
    if data.len() as u64 != header.data_len {
        return Err(format!(
            "header says {} data bytes, file has {}",
            header.data_len,
            data.len()
        ));
    }
    if *blake3::hash(data).as_bytes() != header.checksum {
        return Err("checksum mismatch".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let h = Header::for_data(b"hello");
        let enc = h.encode();
        assert_eq!(Header::decode(&enc).unwrap(), h);
        assert_eq!(h.file_len(), HEADER_LEN as u64 + 5);
        verify(&h, b"hello").unwrap();
        assert!(verify(&h, b"hellp").unwrap_err().contains("checksum"));
        assert!(verify(&h, b"hell").unwrap_err().contains("data bytes"));
        let mut bad = enc;
        bad[0] = b'X';
        assert!(Header::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = enc;
        bad[4] = 9;
        assert!(Header::decode(&bad).unwrap_err().contains("version"));
        assert!(Header::decode(&enc[..10]).is_err());
    }
}

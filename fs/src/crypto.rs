//! Chunk identifiers and encryption.
//!
//! Everything for chunks is derived from the dedup domain key with BLAKE3 `derive_key` and a
//! fixed, versioned context per purpose:
//!
//! | purpose | derivation |
//! |---|---|
//! | chunk id | `keyed_blake3(derive_key("gridback chunk id v1", domain), plaintext)` |
//! | chunk key | `keyed_blake3(derive_key("gridback chunk key v1", domain), id)` |
//! | chunk nonce | first 24 bytes of `keyed_blake3(derive_key("gridback chunk nonce v1", domain), id)` |
//! | chunker seed | first 8 bytes (LE) of `derive_key("gridback chunker seed v1", domain)` |
//!
//! Chunk encryption is convergent: the key depends only on the plaintext (through its id,
//! which is all a reader holds: [`crate::grid::ChunkRef`]) and the domain, so
//! identical chunks encrypt to identical ciphertexts for every client of the domain (that is
//! what makes dedup possible; it also reveals equality of chunks inside the domain). The AEAD
//! is XChaCha20-Poly1305 with the chunk id as associated data, binding a ciphertext to its id.
//! Reusing a (key, nonce) pair only ever happens for the same plaintext, which is safe.
//!
//! Trees and other metadata use the client's own master key with a random 24-byte nonce,
//! prepended to the ciphertext.

use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use gridback_proto::ChunkId;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::{DomainKey, KEY_LEN, MasterKey};

/// Bytes the AEAD adds (the Poly1305 tag).
pub const TAG_LEN: usize = 16;
/// XChaCha20 nonce length.
pub const NONCE_LEN: usize = 24;

/// Context of the chunk-id subkey.
const CTX_CHUNK_ID: &str = "gridback chunk id v1";
/// Context of the convergent chunk-key subkey.
const CTX_CHUNK_KEY: &str = "gridback chunk key v1";
/// Context of the chunk-nonce subkey.
const CTX_CHUNK_NONCE: &str = "gridback chunk nonce v1";
/// Context of the chunker seed.
const CTX_CDC_SEED: &str = "gridback chunker seed v1";
/// Context of the metadata key derived from the master key.
const CTX_META_KEY: &str = "gridback metadata key v1";

/// Errors of encryption and decryption.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong id, or the ciphertext was altered.
    #[error("decryption failed: wrong key or corrupted data")]
    Decrypt,
    /// The AEAD refused to encrypt (input too large).
    #[error("encryption failed")]
    Encrypt,
    /// The ciphertext is shorter than a nonce and a tag.
    #[error("ciphertext of {0} bytes is too short")]
    TooShort(usize),
}

/// Subkeys derived once from a dedup domain key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChunkCrypto {
    id_key: [u8; KEY_LEN],
    key_key: [u8; KEY_LEN],
    nonce_key: [u8; KEY_LEN],
    #[zeroize(skip)]
    cdc_seed: u64,
}

impl std::fmt::Debug for ChunkCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkCrypto(<redacted>)")
    }
}

impl ChunkCrypto {
    /// Derive the subkeys of a domain.
    pub fn new(domain: &DomainKey) -> Self {
        let d = domain.expose();
        let seed = blake3::derive_key(CTX_CDC_SEED, d);
        let mut seed8 = [0u8; 8];
        seed8.copy_from_slice(&seed[..8]);
        Self {
            id_key: blake3::derive_key(CTX_CHUNK_ID, d),
            key_key: blake3::derive_key(CTX_CHUNK_KEY, d),
            nonce_key: blake3::derive_key(CTX_CHUNK_NONCE, d),
            cdc_seed: u64::from_le_bytes(seed8),
        }
    }

    /// The chunk's unique data identifier.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// Seed for the chunker's gear table.
    pub fn cdc_seed(&self) -> u64 {
        self.cdc_seed
    }

    /// The AEAD and nonce for one chunk. The key is convergent: it depends only on the domain
    /// and the chunk id (itself a keyed hash of the plaintext), so every client of the domain
    /// derives the same key for the same chunk, and a reader holding only the id can too.
    fn cipher_and_nonce(&self, id: &ChunkId) -> (XChaCha20Poly1305, XNonce) {
        let mut key = ChunkKey(*blake3::keyed_hash(&self.key_key, id.as_bytes()).as_bytes());
        let n = blake3::keyed_hash(&self.nonce_key, id.as_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&n.as_bytes()[..NONCE_LEN]);
        let cipher = XChaCha20Poly1305::new(&Key::from(key.0));
        key.0.zeroize();
        (cipher, XNonce::from(nonce))
    }

    /// Encrypt `blob` (the compressed chunk whose id is `id`) with the chunk's convergent key;
    /// the id is the associated data. Output: ciphertext then a 16-byte tag.
    pub fn seal(&self, id: &ChunkId, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (cipher, nonce) = self.cipher_and_nonce(id);
        cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: blob,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Encrypt)
    }

    /// Encrypt `blob` in place exactly as [`ChunkCrypto::seal`] does, returning the tag that
    /// `seal` appends (so `blob ++ tag` equals `seal`'s output), without allocating.
    pub fn seal_in_place(
        &self,
        id: &ChunkId,
        blob: &mut [u8],
    ) -> Result<[u8; TAG_LEN], CryptoError> {
        let (cipher, nonce) = self.cipher_and_nonce(id);
        let tag = cipher
            .encrypt_inout_detached(&nonce, id.as_bytes(), blob.into())
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(tag.into())
    }

    /// Decrypt what [`ChunkCrypto::seal`] produced for `id`.
    pub fn open(&self, id: &ChunkId, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < TAG_LEN {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let (cipher, nonce) = self.cipher_and_nonce(id);
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// A chunk's convergent key.
#[derive(Zeroize, ZeroizeOnDrop)]
struct ChunkKey([u8; KEY_LEN]);

/// Bytes [`ChunkCrypto::seal`] adds to a blob.
pub const SEAL_OVERHEAD: usize = TAG_LEN;

fn meta_cipher(master: &MasterKey) -> XChaCha20Poly1305 {
    let mut k = blake3::derive_key(CTX_META_KEY, master.expose());
    let cipher = XChaCha20Poly1305::new(&Key::from(k));
    k.zeroize();
    cipher
}

/// Encrypt metadata (a tree, a file name) with the client's master key: random nonce
/// prepended, `aad` authenticated but not encrypted.
pub fn seal_meta(master: &MasterKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("invariant: the OS random source is available");
    let ct = meta_cipher(master)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypt what [`seal_meta`] produced.
pub fn open_meta(master: &MasterKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    let nonce = XNonce::try_from(&sealed[..NONCE_LEN]).map_err(|_| CryptoError::Decrypt)?;
    meta_cipher(master)
        .decrypt(
            &nonce,
            Payload {
                msg: &sealed[NONCE_LEN..],
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ClientKeys;

    #[test]
    fn ids_are_keyed_and_deterministic() {
        let a = ChunkCrypto::new(&ClientKeys::generate().domain);
        let b = ChunkCrypto::new(&ClientKeys::generate().domain);
        assert_eq!(a.chunk_id(b"hello"), a.chunk_id(b"hello"));
        assert_ne!(a.chunk_id(b"hello"), a.chunk_id(b"hellp"));
        assert_ne!(a.chunk_id(b"hello"), b.chunk_id(b"hello"));
        assert_ne!(a.cdc_seed(), b.cdc_seed());
        assert_ne!(a.chunk_id(b"hello").0, *blake3::hash(b"hello").as_bytes());
    }

    #[test]
    fn convergent_across_clients_of_a_domain() {
        let k1 = ClientKeys::generate();
        let k2 = ClientKeys::with_domain(k1.domain.clone());
        let (c1, c2) = (ChunkCrypto::new(&k1.domain), ChunkCrypto::new(&k2.domain));
        let pt = b"the same chunk in two places".repeat(100);
        let id = c1.chunk_id(&pt);
        assert_eq!(id, c2.chunk_id(&pt));
        let s1 = c1.seal(&id, &pt).unwrap();
        assert_eq!(s1, c2.seal(&id, &pt).unwrap());
        // In place gives the same bytes.
        let mut inplace = pt.clone();
        let tag = c1.seal_in_place(&id, &mut inplace).unwrap();
        inplace.extend_from_slice(&tag);
        assert_eq!(inplace, s1);
        assert_eq!(s1.len(), pt.len() + SEAL_OVERHEAD);
        assert_eq!(c2.open(&id, &s1).unwrap(), pt);
        assert!(
            !s1.windows(16).any(|w| w == &pt[..16]),
            "plaintext visible in ciphertext"
        );
    }

    #[test]
    fn wrong_key_id_or_tampering_fails_with_decrypt() {
        let c = ChunkCrypto::new(&ClientKeys::generate().domain);
        let other = ChunkCrypto::new(&ClientKeys::generate().domain);
        let pt = vec![42u8; 1000];
        let id = c.chunk_id(&pt);
        let sealed = c.seal(&id, &pt).unwrap();
        assert!(matches!(
            other.open(&id, &sealed),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            c.open(&ChunkId([1; 32]), &sealed),
            Err(CryptoError::Decrypt)
        ));
        let mut bad = sealed.clone();
        bad[100] ^= 1;
        assert!(matches!(c.open(&id, &bad), Err(CryptoError::Decrypt)));
        assert!(matches!(
            c.open(&id, &sealed[..10]),
            Err(CryptoError::TooShort(10))
        ));
    }

    #[test]
    fn metadata_uses_random_nonces_and_the_master_key() {
        let k = ClientKeys::generate();
        let a = seal_meta(&k.master, b"tree", b"snap").unwrap();
        let b = seal_meta(&k.master, b"tree", b"snap").unwrap();
        assert_ne!(a, b);
        assert_eq!(open_meta(&k.master, &a, b"snap").unwrap(), b"tree");
        assert!(matches!(
            open_meta(&k.master, &a, b"other"),
            Err(CryptoError::Decrypt)
        ));
        let other = ClientKeys::generate();
        assert!(matches!(
            open_meta(&other.master, &a, b"snap"),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            open_meta(&k.master, &a[..5], b""),
            Err(CryptoError::TooShort(5))
        ));
    }
}

//! The serialized tree of a sealed snapshot (its data assembly record): every directory,
//! file and symlink with names, attributes and chunk lists. It is encrypted with the client's
//! own key before it leaves the machine, so the coordinator and the nodes never see names,
//! sizes or structure.
//!
//! Format: postcard of [`TreeFile`], a versioned enum; `V1` is a pre-order list of nodes where
//! node 0 is the snapshot root and every other node names its parent by index.

use serde::{Deserialize, Serialize};

use crate::grid::ChunkRef;
use crate::meta::Inode;

/// Encrypts and decrypts private blobs (the tree) with the client's own key.
pub trait TreeCipher: Send + Sync + 'static {
    /// Encrypt.
    fn seal(&self, plaintext: &[u8]) -> Vec<u8>;
    /// Decrypt; an error means the wrong key or a damaged blob.
    fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, String>;
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeNode {
    /// Index of the parent node (0 for the root itself).
    pub parent: u32,
    /// Name in the parent (empty for the root).
    pub name: Vec<u8>,
    /// Attributes.
    pub inode: Inode,
    /// Content of a regular file.
    pub chunks: Vec<ChunkRef>,
}

/// Version 1 of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeV1 {
    /// Nodes in pre-order, root first.
    pub nodes: Vec<TreeNode>,
}

/// The versioned envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeFile {
    /// Version 1.
    V1(TreeV1),
}

/// Errors reading a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Undecodable.
    #[error("snapshot tree is damaged: {0}")]
    Decode(#[source] postcard::Error),
    /// Structurally invalid (a parent index out of range, an empty tree).
    #[error("snapshot tree is invalid: {0}")]
    Invalid(String),
}

/// Encode a tree.
pub fn encode(tree: &TreeV1) -> Vec<u8> {
    postcard::to_allocvec(&TreeFile::V1(tree.clone()))
        .expect("invariant: postcard encoding into a Vec cannot fail")
}

/// Decode and validate a tree.
pub fn decode(bytes: &[u8]) -> Result<TreeV1, TreeError> {
    let TreeFile::V1(t) = postcard::from_bytes(bytes).map_err(TreeError::Decode)?;
    if t.nodes.is_empty() {
        return Err(TreeError::Invalid("no root".into()));
    }
    for (i, n) in t.nodes.iter().enumerate().skip(1) {
        if n.parent as usize >= i {
            return Err(TreeError::Invalid(format!(
                "node {i} names parent {} after it",
                n.parent
            )));
        }
    }
    Ok(t)
}

/// Authenticated data binding an encrypted blob to its purpose: a tree cannot be passed off
/// as any other kind of metadata.
const TREE_AAD: &[u8] = b"gridback snapshot tree v1";

/// [`TreeCipher`] with the client's master key (XChaCha20-Poly1305, random nonce).
#[derive(Clone, Debug)]
pub struct MasterKeyCipher {
    master: crate::keys::MasterKey,
}

impl MasterKeyCipher {
    /// From the client's keys.
    pub fn new(keys: &crate::keys::ClientKeys) -> Self {
        Self {
            master: keys.master.clone(),
        }
    }
}

impl TreeCipher for MasterKeyCipher {
    fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        crate::crypto::seal_meta(&self.master, plaintext, TREE_AAD)
            .expect("invariant: XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail")
    }

    fn open(&self, ciphertext: &[u8]) -> Result<Vec<u8>, String> {
        crate::crypto::open_meta(&self.master, ciphertext, TREE_AAD).map_err(|e| e.to_string())
    }
}

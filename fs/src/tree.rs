//! The serialized tree of a sealed snapshot (its data assembly record): every directory,
//! file and symlink with names, attributes and chunk lists. It is encrypted with the client's
//! own key before it leaves the machine, so the coordinator and the nodes never see names,
//! sizes or structure.
//!
//! Format: postcard of [`TreeFile`], a versioned enum (postcard writes the variant index, so an
//! old tree still decodes). `V1` is a list of nodes where node 0 is the snapshot root and every
//! other node names its parent by an earlier index. `V2` adds each node's [`SourceId`] (where a
//! `gridback backup` found it), so the next backup `--from` it can skip unchanged files.
//! [`decode`] always returns the newest in-memory form; [`encode`] writes `V2`.

use gridback_proto::coord_api::TreeChunk;
use serde::{Deserialize, Serialize};

use crate::grid::{ChunkRef, Grid, GridError};
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
    /// Where `gridback backup` found this entry (`None` for trees written by the mount).
    #[serde(default)]
    pub source: Option<SourceId>,
}

/// Identity of a file on the machine it was backed up from: `st_dev` and `st_ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// Version 2 of the tree, and the in-memory form of every version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeV2 {
    /// Nodes, root first; every parent comes before its children.
    pub nodes: Vec<TreeNode>,
}

/// The in-memory tree (the name predates `V2`; it is the newest version).
pub type TreeV1 = TreeV2;

/// The `V1` wire format, kept so that trees sealed before `V2` still decode.
pub mod v1 {
    use serde::{Deserialize, Serialize};

    use crate::grid::ChunkRef;
    use crate::meta::Inode;

    /// One node, as `V1` wrote it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TreeNode {
        /// Index of the parent node.
        pub parent: u32,
        /// Name in the parent.
        pub name: Vec<u8>,
        /// Attributes.
        pub inode: Inode,
        /// Content of a regular file.
        pub chunks: Vec<ChunkRef>,
    }

    /// Version 1 of the tree.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Tree {
        /// Nodes, root first.
        pub nodes: Vec<TreeNode>,
    }

    impl Tree {
        /// To the newest form: no node has a source identity.
        pub fn migrate(self) -> super::TreeV2 {
            super::TreeV2 {
                nodes: self
                    .nodes
                    .into_iter()
                    .map(|n| super::TreeNode {
                        parent: n.parent,
                        name: n.name,
                        inode: n.inode,
                        chunks: n.chunks,
                        source: None,
                    })
                    .collect(),
            }
        }
    }
}

/// The versioned envelope. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeFile {
    /// Version 1 (no source identities).
    V1(v1::Tree),
    /// Version 2.
    V2(TreeV2),
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
    postcard::to_allocvec(&TreeFile::V2(tree.clone()))
        .expect("invariant: postcard encoding into a Vec cannot fail")
}

/// Decode and validate a tree.
pub fn decode(bytes: &[u8]) -> Result<TreeV1, TreeError> {
    let t = match postcard::from_bytes(bytes).map_err(TreeError::Decode)? {
        TreeFile::V1(old) => old.migrate(),
        TreeFile::V2(t) => t,
    };
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

/// Errors fetching a sealed snapshot's tree.
#[derive(Debug, thiserror::Error)]
pub enum FetchTreeError {
    /// A chunk of the tree could not be read.
    #[error(transparent)]
    Grid(#[from] GridError),
    /// The blob does not decrypt with this client's key.
    #[error("cannot decrypt the snapshot tree (wrong client key?): {0}")]
    Decrypt(String),
    /// The decrypted tree is damaged.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A record names a tree chunk larger than any chunk can be.
    #[error("snapshot record names a tree chunk of {0} bytes")]
    ChunkTooLarge(u64),
}

/// Fetch, decrypt and decode the tree a snapshot record names (`SnapshotRecord::tree`).
pub async fn fetch_tree(
    grid: &dyn Grid,
    cipher: &dyn TreeCipher,
    record_tree: &[TreeChunk],
) -> Result<TreeV1, FetchTreeError> {
    let mut blob = Vec::new();
    for c in record_tree {
        let len = u32::try_from(c.len).map_err(|_| FetchTreeError::ChunkTooLarge(c.len))?;
        let data = grid.read_chunk(ChunkRef { id: c.id, len }).await?;
        blob.extend_from_slice(&data);
    }
    let plain = cipher.open(&blob).map_err(FetchTreeError::Decrypt)?;
    Ok(decode(&plain)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meta::{Kind, Time};

    fn inode(kind: Kind, size: u64) -> Inode {
        let t = Time {
            secs: 1_700_000_000,
            nanos: 123_456_789,
        };
        Inode {
            kind,
            perm: 0o640,
            uid: 1000,
            gid: 100,
            size,
            atime: t,
            mtime: t,
            ctime: t,
            nlink: 1,
            parent: 0,
            snapshot: 0,
            symlink: None,
            xattrs: BTreeMap::from([(b"user.k".to_vec(), b"v".to_vec())]),
            provisional: false,
        }
    }

    fn chunk(b: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: gridback_proto::ChunkId([b; 32]),
            len,
        }
    }

    fn old_tree() -> v1::Tree {
        v1::Tree {
            nodes: vec![
                v1::TreeNode {
                    parent: 0,
                    name: Vec::new(),
                    inode: inode(Kind::Dir, 0),
                    chunks: Vec::new(),
                },
                v1::TreeNode {
                    parent: 0,
                    name: "naïve file".as_bytes().to_vec(),
                    inode: inode(Kind::File, 30),
                    chunks: vec![chunk(1, 10), chunk(2, 20)],
                },
            ],
        }
    }

    #[test]
    fn v1_trees_written_before_v2_still_decode() {
        let old = old_tree();
        let bytes = postcard::to_allocvec(&TreeFile::V1(old.clone())).unwrap();
        // A V1 tree starts with variant index 0, as trees sealed by older builds do.
        assert_eq!(bytes[0], 0);
        let t = decode(&bytes).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert!(t.nodes.iter().all(|n| n.source.is_none()));
        assert_eq!(t.nodes[1].name, old.nodes[1].name);
        assert_eq!(t.nodes[1].inode, old.nodes[1].inode);
        assert_eq!(t.nodes[1].chunks, old.nodes[1].chunks);
        assert_eq!(t, old.migrate());
    }

    #[test]
    fn v2_round_trips_with_source_ids() {
        let mut t = old_tree().migrate();
        t.nodes[1].source = Some(SourceId { dev: 2049, ino: 77 });
        let bytes = encode(&t);
        assert_eq!(bytes[0], 1, "encode writes V2");
        assert_eq!(decode(&bytes).unwrap(), t);
    }

    #[test]
    fn invalid_trees_are_refused() {
        assert!(matches!(
            decode(&encode(&TreeV2 { nodes: Vec::new() })),
            Err(TreeError::Invalid(_))
        ));
        let mut t = old_tree().migrate();
        t.nodes[1].parent = 1;
        assert!(matches!(decode(&encode(&t)), Err(TreeError::Invalid(_))));
        assert!(matches!(decode(&[7, 0, 0]), Err(TreeError::Decode(_))));
    }
}

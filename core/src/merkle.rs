//! The election's Merkle tree (docs/design.md §4.5): RFC 6962 §2.1 Merkle Tree Hash over the leaf
//! hashes of its votes ordered by (partition, offset).
//!
//! Every function here takes *leaf hashes* (`SHA-256(0x00 || leaf)`, see
//! [`crate::receipt::Leaf::leaf_hash`]), not leaves: the receipt a voter holds is a leaf hash,
//! and the tree never needs the leaves themselves. Inner nodes are `SHA-256(0x01 || left ||
//! right)`; the empty tree's hash is `SHA-256("")`. For n > 1 leaves the tree splits at k, the
//! largest power of two smaller than n, so the root of a tree is fixed by its leaf count alone.
//!
//! [`root`] and [`audit_path`] follow the RFC's recursive definitions over a slice in memory;
//! [`MerkleBuilder`] computes the same root over a stream (an election of 10^8 votes) with at
//! most 64 hashes of state; [`verify_inclusion`] is the verifier of RFC 9162 §2.1.3.2.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Domain-separation prefix of inner nodes (RFC 6962 §2.1).
pub const NODE_HASH_PREFIX: u8 = 0x01;

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_HASH_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `SHA-256("")`: the root of an election with no vote.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (n ≥ 2): where RFC 6962 splits `D[n]`.
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// `MTH(D[n])` of RFC 6962 §2.1. Recursion depth is log2(n), so any slice that fits in memory
/// is safe for the stack.
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split_point(leaf_hashes.len());
            node_hash(&root(&leaf_hashes[..k]), &root(&leaf_hashes[k..]))
        }
    }
}

/// `PATH(m, D[n])` of RFC 6962 §2.1.1: the siblings from the leaf up, or `None` when `index` is
/// not a leaf of the tree (a receipt looked up in the wrong election, say).
pub fn audit_path(index: usize, leaf_hashes: &[Hash]) -> Option<Vec<Hash>> {
    if index >= leaf_hashes.len() {
        return None;
    }
    let mut path = Vec::new();
    path_into(index, leaf_hashes, &mut path);
    Some(path)
}

fn path_into(m: usize, d: &[Hash], path: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split_point(d.len());
    // The RFC appends the sibling after the sub-path, so siblings come leaf-first.
    if m < k {
        path_into(m, &d[..k], path);
        path.push(root(&d[k..]));
    } else {
        path_into(m - k, &d[k..], path);
        path.push(root(&d[..k]));
    }
}

/// Whether `path` proves that `leaf_hash` is leaf `index` of the tree of `tree_size` leaves
/// with root `root` (RFC 9162 §2.1.3.2). All inputs may come from an untrusted server.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    path: &[Hash],
    root: &Hash,
) -> bool {
    if index >= tree_size {
        return false;
    }
    let mut f_n = index;
    let mut s_n = tree_size - 1;
    let mut r = *leaf_hash;
    for p in path {
        if s_n == 0 {
            // More siblings than levels.
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            // On the right edge of an unbalanced tree, skip the levels without a sibling.
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Streaming Merkle Tree Hash: push leaf hashes in tree order, then [`finish`](Self::finish).
///
/// The state is the roots of the perfect subtrees that the leaves so far decompose into (one
/// per set bit of the count, largest first), so memory is at most 64 hashes whatever the count.
#[derive(Clone, Debug, Default)]
pub struct MerkleBuilder {
    /// Roots of complete subtrees, sizes strictly decreasing; `peaks.len() == size.count_ones()`.
    peaks: Vec<Hash>,
    size: u64,
}

impl MerkleBuilder {
    pub fn new() -> Self {
        Self {
            peaks: Vec::with_capacity(64),
            size: 0,
        }
    }

    /// Leaves pushed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the next leaf hash.
    ///
    /// # Panics
    /// After 2^64 - 1 leaves, which no election reaches.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut carry = leaf_hash;
        // Each trailing one bit of the old size is a complete subtree the same height as
        // `carry`: merging them is binary addition with hashes.
        let mut merges = self.size.trailing_ones();
        while merges > 0 {
            let left = self.peaks.pop().expect("one peak per set bit of size");
            carry = node_hash(&left, &carry);
            merges -= 1;
        }
        self.peaks.push(carry);
        self.size = self.size.checked_add(1).expect("fewer than 2^64 leaves");
        debug_assert_eq!(self.peaks.len(), self.size.count_ones() as usize);
    }

    /// The root of the leaves so far, without consuming the builder.
    pub fn root(&self) -> Hash {
        // MTH splits at the largest power of two below n, which is the first peak; folding the
        // peaks from the right reproduces that split at every level.
        let mut peaks = self.peaks.iter().rev();
        let Some(last) = peaks.next() else {
            return empty_root();
        };
        peaks.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The root and the tree size, as the official result carries them.
    pub fn finish(self) -> (Hash, u64) {
        (self.root(), self.size)
    }
}

impl Extend<Hash> for MerkleBuilder {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, iter: I) {
        for leaf_hash in iter {
            self.push(leaf_hash);
        }
    }
}

/// Node counts of each level of the tree of `n` leaves, leaves first, root last: level l+1
/// holds ceil(len_l / 2) nodes, node j being the hash of nodes 2j and 2j+1 below, or node 2j
/// itself when it is the last and alone (carried up unhashed). Carrying the lone node up is
/// what makes the level tree's root RFC 6962's split at the largest power of two.
pub fn level_sizes(n: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut len = n;
    while len > 0 {
        sizes.push(len);
        if len == 1 {
            break;
        }
        len = len.div_ceil(2);
    }
    sizes
}

/// Where the audit path of leaf `index` in a tree of `n` leaves lies: (level, position) of each
/// sibling, from the leaf up. A lone node carried up has no sibling at that level. `None` when
/// `index` is not a leaf. Equal to [`audit_path`] (property-tested).
pub fn path_positions(index: u64, n: u64) -> Option<Vec<(usize, u64)>> {
    if index >= n {
        return None;
    }
    let mut out = Vec::new();
    let mut i = index;
    for (level, len) in level_sizes(n).into_iter().enumerate() {
        if len == 1 {
            break;
        }
        let sibling = i ^ 1;
        if sibling < len {
            out.push((level, sibling));
        }
        i >>= 1;
    }
    Some(out)
}

/// Streams every node of every level of the tree, in order within each level, so the tree can
/// be stored level by level (the receipts index) with memory bounded by its height.
#[derive(Clone, Debug, Default)]
pub struct LevelsBuilder {
    counts: Vec<u64>,
    /// The left node of each level waiting for its right sibling.
    waiting: Vec<Option<Hash>>,
}

impl LevelsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash; `emit(level, position, node)` gets every node this completes.
    pub fn push(&mut self, leaf_hash: Hash, emit: &mut impl FnMut(usize, u64, &Hash)) {
        self.append(0, leaf_hash, emit);
    }

    fn append(&mut self, level: usize, node: Hash, emit: &mut impl FnMut(usize, u64, &Hash)) {
        if self.counts.len() == level {
            self.counts.push(0);
            self.waiting.push(None);
        }
        emit(level, self.counts[level], &node);
        self.counts[level] += 1;
        if self.counts[level] % 2 == 1 {
            self.waiting[level] = Some(node);
        } else {
            let left = self.waiting[level]
                .take()
                .expect("an even count had a left node");
            self.append(level + 1, node_hash(&left, &node), emit);
        }
    }

    /// Carries the lone last nodes up to the root; returns (root, leaves).
    pub fn finish(mut self, emit: &mut impl FnMut(usize, u64, &Hash)) -> (Hash, u64) {
        let leaves = self.counts.first().copied().unwrap_or(0);
        let mut level = 0;
        while level < self.counts.len() {
            let count = self.counts[level];
            let above = self.counts.get(level + 1).copied().unwrap_or(0);
            if count == 1 && above == 0 {
                let root = self.waiting[level].expect("the only node of the top level");
                debug_assert_eq!(level_sizes(leaves).len(), level + 1);
                return (root, leaves);
            }
            if count % 2 == 1 {
                let lone = self.waiting[level]
                    .take()
                    .expect("an odd count has a lone node");
                self.append(level + 1, lone, emit);
            }
            level += 1;
        }
        (empty_root(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipt::leaf_hash_of;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_level_tree_has_the_rfc_root_and_paths(n in 0usize..300, pick in any::<u64>()) {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash_of(&(i as u64).to_be_bytes())).collect();
            let mut levels: Vec<Vec<Hash>> = Vec::new();
            let mut emit = |level: usize, pos: u64, node: &Hash| {
                if levels.len() == level { levels.push(Vec::new()); }
                prop_assert_eq!(levels[level].len() as u64, pos);
                levels[level].push(*node);
                Ok(())
            };
            let mut b = LevelsBuilder::new();
            let mut failed = Ok(());
            {
                let mut record = |l: usize, p: u64, h: &Hash| { if failed.is_ok() { failed = emit(l, p, h); } };
                for leaf in &leaves { b.push(*leaf, &mut record); }
                let (got_root, size) = b.finish(&mut record);
                prop_assert_eq!(got_root, root(&leaves));
                prop_assert_eq!(size, n as u64);
            }
            failed?;
            let sizes: Vec<u64> = levels.iter().map(|l| l.len() as u64).collect();
            prop_assert_eq!(sizes, level_sizes(n as u64));
            if n > 0 {
                let index = pick % n as u64;
                let path: Vec<Hash> = path_positions(index, n as u64).unwrap()
                    .into_iter().map(|(l, p)| levels[l][p as usize]).collect();
                prop_assert_eq!(Some(path.clone()), audit_path(index as usize, &leaves));
                prop_assert!(verify_inclusion(&leaves[index as usize], index, n as u64, &path, &root(&leaves)));
            }
            prop_assert_eq!(path_positions(n as u64, n as u64), None);
        }
    }

    fn h(hex: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).unwrap();
        out
    }

    // The reference vectors of RFC 6962 implementations, from transparency-dev/merkle (formerly
    // part of google/trillian and google/certificate-transparency): leaves and roots from
    // `testonly/constants.go` (LeafInputs, RootHashes; commit 582a6ad190b6848f1d26f8bf08ddef29955d9db1),
    // inclusion proofs from `proof/verify_test.go` (inclusionProofs; commit
    // 02194e9afb6c1d95b5381350007963aa70fff472).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];

    /// Root of the tree of the first n leaves, by n.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// (leaf index, tree size, path); the Go file numbers leaves from 1, these from 0.
    const PATHS: [(usize, usize, &[&str]); 4] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    fn reference_leaf_hashes() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash_of(l)).collect()
    }

    #[test]
    fn matches_the_reference_roots_for_every_prefix() {
        let hashes = reference_leaf_hashes();
        let mut builder = MerkleBuilder::new();
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(root(&hashes[..n]), h(want), "root of {n}");
            assert_eq!(builder.root(), h(want), "builder root of {n}");
            assert_eq!(builder.size(), n as u64);
            if n < hashes.len() {
                builder.push(hashes[n]);
            }
        }
        assert_eq!(builder.finish(), (h(ROOTS[8]), 8));
        assert_eq!(empty_root(), h(ROOTS[0]));
    }

    #[test]
    fn matches_the_reference_audit_paths() {
        let hashes = reference_leaf_hashes();
        for (index, size, want) in PATHS {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            let got = audit_path(index, &hashes[..size]).unwrap();
            assert_eq!(got, want, "path of {index} in {size}");
            assert!(verify_inclusion(
                &hashes[index],
                index as u64,
                size as u64,
                &got,
                &h(ROOTS[size])
            ));
        }
        // A one-leaf tree: empty path, root == leaf hash.
        assert_eq!(audit_path(0, &hashes[..1]), Some(vec![]));
        assert!(verify_inclusion(&hashes[0], 0, 1, &[], &h(ROOTS[1])));
    }

    #[test]
    fn refuses_the_reference_corruptions() {
        // The probes of transparency-dev/merkle's corruptInclusionProof.
        let hashes = reference_leaf_hashes();
        let some_hash = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        for (index, size, path) in PATHS {
            let path: Vec<Hash> = path.iter().map(|x| h(x)).collect();
            let (leaf, i, n, root) = (hashes[index], index as u64, size as u64, h(ROOTS[size]));
            let ok = |leaf: &Hash, i: u64, n: u64, path: &[Hash], root: &Hash| {
                verify_inclusion(leaf, i, n, path, root)
            };
            assert!(!ok(&leaf, i.wrapping_sub(1), n, &path, &root));
            assert!(!ok(&leaf, i + 1, n, &path, &root));
            assert!(!ok(&leaf, i ^ 2, n, &path, &root));
            assert!(!ok(&leaf, i, n * 2, &path, &root));
            assert!(!ok(&leaf, i, n / 2, &path, &root));
            assert!(!ok(&some_hash, i, n, &path, &root));
            assert!(!ok(&leaf, i, n, &path, &empty_root()));
            assert!(!ok(&leaf, i, n, &path, &some_hash));
            let mut longer = path.clone();
            longer.push(root);
            assert!(!ok(&leaf, i, n, &longer, &root));
            let mut front = vec![root];
            front.extend_from_slice(&path);
            assert!(!ok(&leaf, i, n, &front, &root));
            for k in 0..path.len() {
                let mut flipped = path.clone();
                flipped[k][0] ^= 8;
                assert!(!ok(&leaf, i, n, &flipped, &root), "bit flip in {k}");
            }
            assert!(!ok(&leaf, i, n, &path[..path.len() - 1], &root));
            if path.len() > 1 {
                let mut inserted = vec![path[0], some_hash];
                inserted.extend_from_slice(&path[1..]);
                assert!(!ok(&leaf, i, n, &inserted, &root));
            }
        }
    }

    #[test]
    fn refuses_impossible_positions() {
        let x = leaf_hash_of(b"x");
        assert!(!verify_inclusion(&x, 0, 0, &[], &empty_root()));
        assert!(!verify_inclusion(&x, 1, 1, &[], &x));
        assert!(!verify_inclusion(&x, u64::MAX, u64::MAX, &[], &x));
        assert!(!verify_inclusion(&x, 0, u64::MAX, &[x; 64], &x));
        assert_eq!(audit_path(0, &[]), None);
        assert_eq!(audit_path(3, &[x; 3]), None);
    }

    #[test]
    fn the_builder_state_stays_logarithmic() {
        let mut b = MerkleBuilder::new();
        for i in 0u32..5000 {
            b.push(leaf_hash_of(&i.to_be_bytes()));
            assert_eq!(b.peaks.len(), b.size.count_ones() as usize);
        }
        assert!(b.peaks.capacity() <= 64);
        // Complete subtrees are merged eagerly: 4096 + 512 + 256 + 128 + 8 leaves = 5 peaks.
        assert_eq!(b.peaks.len(), 5);
    }

    #[test]
    fn split_points_are_the_largest_smaller_power_of_two() {
        let cases = [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 20, 1 << 19),
        ];
        for (n, k) in cases {
            assert_eq!(split_point(n), k, "{n}");
        }
        assert_eq!(split_point(usize::MAX), 1 << (usize::BITS - 1));
    }

    fn leaves(max: usize) -> impl Strategy<Value = Vec<Hash>> {
        proptest::collection::vec(any::<[u8; 32]>(), 1..max)
    }

    proptest! {
        #[test]
        fn every_audit_path_verifies(hashes in leaves(80)) {
            let r = root(&hashes);
            let n = hashes.len() as u64;
            for (i, leaf) in hashes.iter().enumerate() {
                let path = audit_path(i, &hashes).unwrap();
                // A path has at most ceil(log2(n)) siblings.
                prop_assert!(path.len() as u32 <= u64::BITS - (n - 1).leading_zeros());
                prop_assert!(verify_inclusion(leaf, i as u64, n, &path, &r));
            }
        }

        #[test]
        fn a_wrong_leaf_or_index_does_not_verify(
            hashes in leaves(80),
            pick in any::<prop::sample::Index>(),
            other in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let r = root(&hashes);
            let n = hashes.len() as u64;
            let i = pick.index(hashes.len());
            let path = audit_path(i, &hashes).unwrap();
            let mut wrong = hashes[i];
            wrong[flip.index(32)] ^= 1;
            prop_assert!(!verify_inclusion(&wrong, i as u64, n, &path, &r));
            let j = other.index(hashes.len());
            // Another index only verifies when its leaf hash happens to be the same value.
            if j != i && hashes[j] != hashes[i] {
                prop_assert!(!verify_inclusion(&hashes[i], j as u64, n, &path, &r));
                prop_assert!(!verify_inclusion(&hashes[j], i as u64, n, &path, &r));
            }
        }

        #[test]
        fn the_builder_root_is_the_recursive_root(hashes in proptest::collection::vec(any::<[u8; 32]>(), 0..300)) {
            let mut b = MerkleBuilder::new();
            b.extend(hashes.iter().copied());
            prop_assert_eq!(b.finish(), (root(&hashes), hashes.len() as u64));
        }
    }
}

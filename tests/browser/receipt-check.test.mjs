// Unit tests of the voter page's receipt check (src/serve/web/receipt-check.js), run by Node
// straight from the source tree: leaf encoding, RFC 6962 hashes and RFC 9162 inclusion
// verification. Expected values come from an independent reference built here on node:crypto
// (and, for the leaf, the vector of core/src/receipt.rs), never from the module under test.
//
//   node --test tests/browser/receipt-check.test.mjs

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';

import {
  bytesToHex, encodeLeaf, hexToBytes, judgeProof, leafHash, nodeHash, normalizeReceipt,
  rootFromInclusionProof, runReceiptCheck, verifyInclusion,
} from '../../src/serve/web/receipt-check.js';

// ---- The reference: RFC 6962 §2.1 by the book, synchronous, on node:crypto ------------------

const sha = (...parts) => new Uint8Array(createHash('sha256').update(Buffer.concat(parts.map((p) => Buffer.from(p)))).digest());
const refLeaf = (data) => sha([0x00], data);
const refNode = (l, r) => sha([0x01], l, r);
/** Largest power of two strictly smaller than n (n >= 2). */
const split = (n) => 2 ** Math.floor(Math.log2(n - 1));
/** MTH(D[n]) over leaf hashes. */
function refRoot(hashes) {
  if (hashes.length === 0) return sha([]);
  if (hashes.length === 1) return hashes[0];
  const k = split(hashes.length);
  return refNode(refRoot(hashes.slice(0, k)), refRoot(hashes.slice(k)));
}
/** PATH(m, D[n]) over leaf hashes: siblings from the leaf up. */
function refPath(m, hashes) {
  if (hashes.length <= 1) return [];
  const k = split(hashes.length);
  return m < k
    ? [...refPath(m, hashes.slice(0, k)), refRoot(hashes.slice(k))]
    : [...refPath(m - k, hashes.slice(k)), refRoot(hashes.slice(0, k))];
}
const hex = (b) => Buffer.from(b).toString('hex');

// ---- Leaf encoding --------------------------------------------------------------------------

// The independent vector of core/src/receipt.rs: election "final-2026", voter 42 (pseudonym
// under the test audit key), option "blue", partition 3, offset 123456789, nonce 00 01 … 0f.
const VECTOR = {
  leaf: {
    version: 1,
    election: 'final-2026',
    pseudonym: '39cd7f07e09d6017f03b985a7d67e842',
    option: 'blue',
    partition: 3,
    offset: 123456789,
    nonce: '000102030405060708090a0b0c0d0e0f',
  },
  bytes: '01000a66696e616c2d3230323639cd7f07e09d6017f03b985a7d67e8420004'
    + '626c75650000000300000000075bcd15000102030405060708090a0b0c0d0e0f',
  receipt: '81335a0b7db6187f332f3b1d4e711b809ebfcc64b20863c8f482ee0e183618f2',
};

test('encodeLeaf follows the canonical layout', () => {
  const leaf = { ...VECTOR.leaf, partition: 0xfffffffe, offset: 2 ** 40 + 7 };
  const u16 = (n) => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };
  const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
  const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; };
  const expected = Buffer.concat([
    Buffer.from([1]),
    u16(10), Buffer.from('final-2026'),
    Buffer.from(leaf.pseudonym, 'hex'),
    u16(4), Buffer.from('blue'),
    u32(leaf.partition),
    u64(leaf.offset),
    Buffer.from(leaf.nonce, 'hex'),
  ]);
  assert.equal(hex(encodeLeaf(leaf)), expected.toString('hex'));
  // Offsets beyond 2^53 arrive as strings or BigInts; they encode exactly.
  assert.equal(hex(encodeLeaf({ ...leaf, offset: '18446744073709551615' })).slice(-48, -32), 'ffffffffffffffff');
});

test('encodeLeaf and leafHash match the vector of core/src/receipt.rs', async () => {
  const bytes = encodeLeaf(VECTOR.leaf);
  assert.equal(hex(bytes), VECTOR.bytes);
  assert.equal(hex(refLeaf(bytes)), VECTOR.receipt, 'the reference agrees with the Rust vector');
  assert.equal(bytesToHex(await leafHash(bytes)), VECTOR.receipt);
});

test('encodeLeaf refuses what it cannot encode exactly', () => {
  for (const bad of [
    { version: 2 },
    { election: '' },
    { pseudonym: '39cd' },
    { nonce: 'zz0102030405060708090a0b0c0d0e0f' },
    { partition: 2 ** 32 },
    { partition: -1 },
    { offset: 2 ** 60 }, // not a safe integer: the JSON number already lost digits
    { offset: 1.5 },
  ]) {
    assert.throws(() => encodeLeaf({ ...VECTOR.leaf, ...bad }), { name: 'ReceiptCheckError' }, JSON.stringify(bad));
  }
});

test('receipts are normalized or refused', () => {
  assert.equal(normalizeReceipt(` ${VECTOR.receipt.toUpperCase().slice(0, 32)}\n${VECTOR.receipt.slice(32)} `), VECTOR.receipt);
  assert.equal(normalizeReceipt(VECTOR.receipt.slice(1)), null);
  assert.equal(normalizeReceipt(`${VECTOR.receipt.slice(1)}g`), null);
  assert.equal(normalizeReceipt(undefined), null);
  assert.equal(hex(hexToBytes('00ff10')), '00ff10');
  assert.throws(() => hexToBytes('abc'));
});

// ---- RFC 6962 vectors -----------------------------------------------------------------------

test('two-leaf tree of "" and "\\x00" (RFC 6962)', async () => {
  const d0 = new Uint8Array([]);
  const d1 = new Uint8Array([0]);
  const h0 = refLeaf(d0);
  const h1 = refLeaf(d1);
  // The well-known RFC 6962 leaf hash of the empty leaf, checked against node:crypto too.
  assert.equal(hex(h0), '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d');
  assert.deepEqual(await leafHash(d0), h0);
  assert.deepEqual(await leafHash(d1), h1);
  const root = refNode(h0, h1);
  assert.deepEqual(await nodeHash(h0, h1), root);
  assert.deepEqual(refRoot([h0, h1]), root);

  assert.deepEqual(await rootFromInclusionProof(h0, 0, 2, [h1]), root);
  assert.deepEqual(await rootFromInclusionProof(h1, 1, 2, [h0]), root);
  assert.equal(await verifyInclusion(h0, 0, 2, [h1], root), true);
  assert.equal(await verifyInclusion(h1, 1, 2, [h0], root), true);
  // Swapped positions, a wrong root, a wrong size, a missing or extra sibling.
  assert.equal(await verifyInclusion(h0, 1, 2, [h1], root), false);
  assert.equal(await verifyInclusion(h0, 0, 2, [h1], h0), false);
  assert.equal(await verifyInclusion(h0, 0, 3, [h1], root), false);
  assert.equal(await verifyInclusion(h0, 0, 2, [], root), false);
  assert.equal(await verifyInclusion(h0, 0, 2, [h1, h1], root), false);
  assert.equal(await verifyInclusion(h0, 2, 2, [h1], root), false);
  // A one-leaf tree: the leaf is the root, with an empty path.
  assert.equal(await verifyInclusion(h0, 0, 1, [], h0), true);
  assert.equal(await verifyInclusion(h0, 0, 1, [h1], h0), false);
});

test('7-leaf tree: every index proves, and nothing else does', async () => {
  const leaves = Array.from({ length: 7 }, (_, i) => refLeaf(Uint8Array.of(i, i * 3, 0xa5)));
  const root = refRoot(leaves);
  for (let i = 0; i < leaves.length; i++) {
    const path = refPath(i, leaves);
    assert.deepEqual(await rootFromInclusionProof(leaves[i], i, 7, path), root, `index ${i}`);
    assert.equal(await verifyInclusion(leaves[i], i, 7, path, root), true, `index ${i}`);
    // Wrong index, wrong leaf, a damaged sibling, a wrong size, a truncated or extended path.
    assert.equal(await verifyInclusion(leaves[i], (i + 1) % 7, 7, path, root), false, `index ${i} moved`);
    assert.equal(await verifyInclusion(leaves[(i + 1) % 7], i, 7, path, root), false, `index ${i} other leaf`);
    for (let j = 0; j < path.length; j++) {
      const damaged = path.map((p) => p.slice());
      damaged[j][0] ^= 1;
      assert.equal(await verifyInclusion(leaves[i], i, 7, damaged, root), false, `index ${i} sibling ${j}`);
    }
    // (A size with the same shape below this leaf, e.g. 6 or 8 for leaf 0, gives the same
    // computation: the root is what binds the size. 4 and 9 have other heights.)
    for (const size of [4, 9]) {
      if (i < size) assert.equal(await verifyInclusion(leaves[i], i, size, path, root), false, `index ${i} size ${size}`);
    }
    assert.equal(await verifyInclusion(leaves[i], i, 7, path.slice(0, -1), root), false, `index ${i} short`);
    assert.equal(await verifyInclusion(leaves[i], i, 7, [...path, root], root), false, `index ${i} long`);
  }
  // Every prefix of the tree as well (sizes 1..7, every index), against the reference.
  for (let n = 1; n <= 7; n++) {
    const sub = leaves.slice(0, n);
    for (let i = 0; i < n; i++) {
      assert.equal(await verifyInclusion(sub[i], i, n, refPath(i, sub), refRoot(sub)), true, `size ${n} index ${i}`);
    }
  }
});

// ---- The whole check, with canned server answers --------------------------------------------

/** A final election of 5 votes whose leaf 3 is VECTOR.leaf; the answers a server would give. */
function server() {
  const leaves = [0, 1, 2].map((i) => refLeaf(Uint8Array.of(i)));
  leaves.push(hexToBytes(VECTOR.receipt), refLeaf(Uint8Array.of(9)));
  const root = hex(refRoot(leaves));
  const official = { election: 'final-2026', state: 'final', final: true, merkle: { root, tree_size: 5 } };
  const proof = {
    leaf: VECTOR.leaf, leaf_hash: VECTOR.receipt, leaf_index: 3, tree_size: 5, root,
    audit_path: refPath(3, leaves).map(hex),
  };
  return { official, proof };
}
const OPTIONS = [{ id: 'red', label: 'Red' }, { id: 'blue', label: 'Blue' }];

test('judgeProof: counted, for the right option', async () => {
  const { official, proof } = server();
  const v = await judgeProof({ receipt: VECTOR.receipt, electionId: 'final-2026', official, proof, options: OPTIONS });
  assert.equal(v.code, 'counted', v.message);
  assert.equal(v.counted, true);
  assert.equal(v.message, 'Your vote for Blue is counted in the official result (leaf 3 of 5).');
  assert.ok(v.details.some(([k, val]) => k === 'Official root' && val === official.merkle.root));
});

test('judgeProof: each kind of bad proof has its own verdict', async () => {
  const cases = [
    ['root_mismatch', ({ official }) => { official.merkle.root = hex(sha([1])); }],
    ['root_mismatch', ({ proof }) => { proof.audit_path[0] = hex(sha([2])); }],
    ['leaf_mismatch', ({ proof }) => { proof.leaf = { ...proof.leaf, option: 'red' }; }],
    ['wrong_election', ({ proof }) => { proof.leaf = { ...proof.leaf, election: 'other' }; }],
    ['tree_size_mismatch', ({ proof }) => { proof.tree_size = 4; }],
    ['proof_shape', ({ proof }) => { proof.audit_path.pop(); }],
    ['proof_shape', ({ proof }) => { proof.leaf_index = 5; }],
    ['no_official_root', ({ official }) => { delete official.merkle; }],
    ['bad_answer', ({ proof }) => { proof.audit_path[1] = 'xyz'; }],
  ];
  for (const [code, damage] of cases) {
    const answers = server();
    damage(answers);
    const v = await judgeProof({ receipt: VECTOR.receipt, electionId: 'final-2026', ...answers, options: OPTIONS });
    assert.equal(v.counted, false, `${code}: ${v.message}`);
    assert.equal(v.code, code, v.message);
  }
  // The root in the proof answer is not trusted: only the official one counts.
  const answers = server();
  answers.official.merkle.root = hex(sha([3]));
  const v = await judgeProof({ receipt: VECTOR.receipt, electionId: 'final-2026', ...answers, options: OPTIONS });
  assert.equal(v.code, 'root_mismatch');
  assert.match(v.message, /does not match the official root/);
});

test('runReceiptCheck: the answers of the API', async () => {
  const { official, proof } = server();
  const election = { id: 'final-2026', options: OPTIONS };
  const api = (routes) => async (path) => routes[path] ?? { ok: false, status: 404, data: null, error: { code: 'not_found' } };
  const resultsPath = '/v1/elections/final-2026/results';
  const proofPath = `/v1/elections/final-2026/receipts/${VECTOR.receipt}`;
  const ok = (data) => ({ ok: true, status: 200, data, error: null });

  let v = await runReceiptCheck({ election, receipt: VECTOR.receipt.toUpperCase(), api: api({ [resultsPath]: ok(official), [proofPath]: ok(proof) }) });
  assert.equal(v.code, 'counted', v.message);
  v = await runReceiptCheck({ election, receipt: VECTOR.receipt, api: api({ [resultsPath]: ok(official) }) });
  assert.equal(v.code, 'not_in_tree');
  assert.match(v.message, /not in the official tree/);
  v = await runReceiptCheck({ election, receipt: VECTOR.receipt, api: api({ [resultsPath]: ok({ ...official, final: false, state: 'closed' }) }) });
  assert.equal(v.code, 'not_final');
  v = await runReceiptCheck({ election, receipt: 'abc', api: api({}) });
  assert.equal(v.code, 'invalid_receipt');
  v = await runReceiptCheck({ election, receipt: VECTOR.receipt, api: async () => ({ ok: false, status: 0, data: null, error: { code: 'network' } }) });
  assert.equal(v.code, 'unavailable');
});

test('runReceiptCheck: without WebCrypto it says why instead of failing silently', async () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, 'crypto');
  Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true, writable: true });
  try {
    const v = await runReceiptCheck({
      election: { id: 'final-2026', options: OPTIONS },
      receipt: VECTOR.receipt,
      api: async () => assert.fail('no request without WebCrypto'),
    });
    assert.equal(v.code, 'insecure');
    assert.match(v.message, /secure connection/);
  } finally {
    Object.defineProperty(globalThis, 'crypto', saved);
  }
  assert.ok(globalThis.crypto?.subtle, 'WebCrypto is back');
});

// Checking a receipt in the browser (docs/design.md §4.5): the voter's own proof that their vote is
// counted in the official result, without trusting the server's word for it.
//
//   1. rebuild the leaf's canonical bytes from the fields the server returns and check that
//      SHA-256(0x00 || leaf) is the receipt (so the leaf, and its option, are the voter's vote);
//   2. verify the audit path against the OFFICIAL root of `GET …/results` (RFC 9162 §2.1.3.2,
//      the same algorithm as `verify_inclusion` in core/src/merkle.rs);
//   3. a verdict: counted (for which option, leaf i of n) or a precise reason why not.
//
// No imports and no DOM: the functions below are pure (apart from WebCrypto's digest) so that
// `node --test` runs them directly (tests/browser/receipt-check.test.mjs). The network is only
// reached through the `api` function the page passes to `runReceiptCheck`.

const encoder = new TextEncoder();

/** `SHA-256` as WebCrypto offers it, or null when this context has none (plain http). */
export function subtleCrypto() {
  return globalThis.crypto?.subtle ?? null;
}

// ---- Bytes --------------------------------------------------------------------------------

/** A receipt as typed or pasted (spaces, line breaks, upper case allowed), or null. */
export function normalizeReceipt(text) {
  const compact = String(text ?? '').replace(/\s+/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(compact) ? compact : null;
}

/** Lowercase hex of `bytes`. */
export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The bytes of an even-length hex string; throws on anything else (`what` names it). */
export function hexToBytes(hex, what = 'a value') {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new ReceiptCheckError('bad_answer', `${what} is not hexadecimal`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Whether two byte arrays are equal. */
export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A failure with a machine `code` and a human `message`. */
export class ReceiptCheckError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ReceiptCheckError';
    this.code = code;
  }
}

/** A non-negative integer (JSON number, bigint or decimal string) as a BigInt, or throws. */
function toU64(value, what) {
  let n = null;
  if (typeof value === 'bigint') n = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) n = BigInt(value);
  else if (typeof value === 'string' && /^\d{1,20}$/.test(value)) n = BigInt(value);
  if (n === null || n < 0n || n > 0xffff_ffff_ffff_ffffn) {
    throw new ReceiptCheckError('bad_answer', `${what} is not a whole number this page can check exactly`);
  }
  return n;
}

// ---- The leaf -----------------------------------------------------------------------------

/**
 * The canonical bytes of a leaf (core/src/receipt.rs):
 * `0x01 | u16 BE len + election | pseudonym (16) | u16 BE len + option | partition u32 BE |
 * offset u64 BE | nonce (16)`. `leaf` is the `leaf` object of `GET …/receipts/{receipt}`
 * (pseudonym and nonce in hex). Throws a ReceiptCheckError for fields it cannot encode.
 */
export function encodeLeaf(leaf) {
  if (!leaf || typeof leaf !== 'object') throw new ReceiptCheckError('bad_answer', 'the answer has no leaf');
  if (leaf.version !== 1) {
    throw new ReceiptCheckError('bad_answer', `the leaf has version ${leaf.version}; this page knows version 1`);
  }
  const str = (value, what) => {
    if (typeof value !== 'string' || value.length === 0) {
      throw new ReceiptCheckError('bad_answer', `the leaf's ${what} is missing`);
    }
    const bytes = encoder.encode(value);
    if (bytes.length > 0xffff) throw new ReceiptCheckError('bad_answer', `the leaf's ${what} is too long`);
    const len = new Uint8Array(2);
    new DataView(len.buffer).setUint16(0, bytes.length);
    return concat(len, bytes);
  };
  const fixed = (value, what) => {
    const bytes = hexToBytes(value, `the leaf's ${what}`);
    if (bytes.length !== 16) throw new ReceiptCheckError('bad_answer', `the leaf's ${what} is not 16 bytes`);
    return bytes;
  };
  const partition = toU64(leaf.partition, "the leaf's partition");
  if (partition > 0xffff_ffffn) throw new ReceiptCheckError('bad_answer', "the leaf's partition is too large");
  const numbers = new Uint8Array(12);
  const view = new DataView(numbers.buffer);
  view.setUint32(0, Number(partition));
  view.setBigUint64(4, toU64(leaf.offset, "the leaf's offset"));
  return concat(
    Uint8Array.of(1),
    str(leaf.election, 'election'),
    fixed(leaf.pseudonym, 'pseudonym'),
    str(leaf.option, 'option'),
    numbers,
    fixed(leaf.nonce, 'nonce'),
  );
}

// ---- Hashes (RFC 6962 §2.1) ---------------------------------------------------------------

export async function sha256(bytes) {
  const subtle = subtleCrypto();
  if (!subtle) throw new ReceiptCheckError('insecure', 'WebCrypto is not available');
  return new Uint8Array(await subtle.digest('SHA-256', bytes));
}

/** `SHA-256(0x00 || leaf)`: the leaf's node in the tree, and the receipt's bytes. */
export function leafHash(leafBytes) {
  return sha256(concat(Uint8Array.of(0x00), leafBytes));
}

/** `SHA-256(0x01 || left || right)`: an inner node. */
export function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(0x01), left, right));
}

/**
 * The root that `path` leads to from `leaf` (a leaf hash) at `index` of a tree of `treeSize`
 * leaves, RFC 9162 §2.1.3.2 (`verify_inclusion` in core/src/merkle.rs). Indexes are BigInts
 * inside, so trees beyond 2^32 leaves work too. Throws a ReceiptCheckError `proof_shape` when
 * the path cannot belong to such a tree (index out of range, too many or too few siblings).
 */
export async function rootFromInclusionProof(leaf, index, treeSize, path) {
  const size = toU64(treeSize, 'the tree size');
  let fn = toU64(index, 'the leaf index');
  if (fn >= size) {
    throw new ReceiptCheckError('proof_shape', `leaf ${fn} cannot be in a tree of ${size} leaves`);
  }
  let sn = size - 1n;
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) throw new ReceiptCheckError('proof_shape', 'the audit path has more hashes than the tree has levels');
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      // On the right edge of an unbalanced tree, skip the levels without a sibling.
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new ReceiptCheckError('proof_shape', 'the audit path has fewer hashes than the tree has levels');
  return r;
}

/** Whether `path` proves `leaf` (a leaf hash) is leaf `index` of the tree with `root`. */
export async function verifyInclusion(leaf, index, treeSize, path, root) {
  try {
    return equalBytes(await rootFromInclusionProof(leaf, index, treeSize, path), root);
  } catch (err) {
    if (err instanceof ReceiptCheckError && err.code !== 'insecure') return false;
    throw err;
  }
}

// ---- The check ----------------------------------------------------------------------------

/**
 * The verdict on `receipt` (normalized hex) in election `electionId` from the two answers:
 * `official`, the body of `GET …/results` (final, with `merkle`), and `proof`, the 200 body of
 * `GET …/receipts/{receipt}`. `options`: the ballot's `[{id, label}]`, for the option's label.
 *
 * Answers `{counted, code, message, option?, details}`; `details` is a list of
 * `[term, value]` for the collapsible details. Throws a ReceiptCheckError `insecure` without
 * WebCrypto.
 */
export async function judgeProof({ receipt, electionId, official, proof, options = [] }) {
  const details = [];
  const verdict = (counted, code, message, extra = {}) => ({ counted, code, message, details, ...extra });
  const merkle = official?.merkle;
  if (!merkle || typeof merkle.root !== 'string' || !/^[0-9a-f]{64}$/i.test(merkle.root)) {
    return verdict(false, 'no_official_root', 'The official result carries no Merkle root, so no receipt can be checked against it.');
  }
  const officialRoot = hexToBytes(merkle.root, 'the official root');
  details.push(['Official root', merkle.root.toLowerCase()]);
  details.push(['Official tree size', String(merkle.tree_size)]);
  if (!proof || typeof proof !== 'object') {
    return verdict(false, 'bad_answer', 'The server’s proof could not be read.');
  }
  try {
    const leaf = proof.leaf ?? {};
    const option = options.find((o) => o.id === leaf.option);
    const label = option?.label ?? String(leaf.option ?? '?');
    const path = Array.isArray(proof.audit_path)
      ? proof.audit_path.map((p, i) => hexToBytes(p, `hash ${i + 1} of the audit path`))
      : null;
    details.push(['Leaf index', `${proof.leaf_index} (counting from 0)`]);
    details.push(['Audit path length', path ? `${path.length} hash${path.length === 1 ? '' : 'es'}` : 'missing']);
    details.push(['Partition and offset', `${leaf.partition} / ${leaf.offset}`]);
    details.push(['Root in the proof', String(proof.root ?? 'missing')]);

    if (leaf.election !== electionId) {
      return verdict(false, 'wrong_election', `The server’s proof is for another election (“${leaf.election}”), not this one.`);
    }
    // 1. The leaf is the voter's vote: its bytes hash to the receipt.
    const computed = await leafHash(encodeLeaf(leaf));
    details.push(['Leaf hash computed here', bytesToHex(computed)]);
    if (bytesToHex(computed) !== receipt) {
      return verdict(false, 'leaf_mismatch', 'The vote the server shows for this receipt does not hash to your receipt: the answer is not your vote.');
    }
    if (!path) return verdict(false, 'bad_answer', 'The server’s proof has no audit path.');
    // 2. The leaf is in the official tree.
    if (String(proof.tree_size) !== String(merkle.tree_size)) {
      return verdict(false, 'tree_size_mismatch', `The proof is for a tree of ${proof.tree_size} votes, but the official tree has ${merkle.tree_size}.`);
    }
    let root;
    try {
      root = await rootFromInclusionProof(computed, proof.leaf_index, merkle.tree_size, path);
    } catch (err) {
      if (err.code === 'proof_shape') {
        return verdict(false, 'proof_shape', `The proof does not fit the official tree: ${err.message}.`);
      }
      throw err;
    }
    details.push(['Root computed here', bytesToHex(root)]);
    if (!equalBytes(root, officialRoot)) {
      return verdict(false, 'root_mismatch', 'The proof does not match the official root: your vote cannot be shown to be counted.');
    }
    // 3. Counted, as cast.
    return verdict(true, 'counted',
      `Your vote for ${label} is counted in the official result (leaf ${proof.leaf_index} of ${merkle.tree_size}).`,
      { option: { id: leaf.option, label } });
  } catch (err) {
    if (err instanceof ReceiptCheckError && err.code === 'bad_answer') {
      return verdict(false, 'bad_answer', `The server’s proof could not be checked: ${err.message}.`);
    }
    throw err;
  }
}

/**
 * The whole check of `receipt` (as typed) in `election` (`{id, title, options}`): fetches the
 * official result and the proof through `api(path)` (the pages' `api` of common.js: answers
 * `{ok, status, data, error}`), then judges. Always answers a verdict as `judgeProof` does,
 * never throws: network failures, a result not yet official, an unknown receipt and a missing
 * WebCrypto each have their own `code` and message.
 */
export async function runReceiptCheck({ election, receipt: typed, api }) {
  const verdict = (code, message) => ({ counted: false, code, message, details: [] });
  const receipt = normalizeReceipt(typed);
  if (!receipt) {
    return verdict('invalid_receipt', 'A receipt is 64 characters, each 0–9 or a–f: check that you pasted all of it.');
  }
  if (!subtleCrypto()) {
    return verdict('insecure',
      'This check needs a secure connection (https, or this machine as localhost): the browser does not offer the cryptography it needs on this page.');
  }
  const id = encodeURIComponent(election.id);
  const results = await api(`/v1/elections/${id}/results`);
  if (!results.ok) return verdict('unavailable', unreachable(results, 'The official result'));
  if (results.data?.final !== true) {
    return verdict('not_final',
      'The official result of this election is not ready yet: receipts can be checked once it is (the recount follows the close). Try again in a moment.');
  }
  const proof = await api(`/v1/elections/${id}/receipts/${receipt}`);
  if (proof.status === 404) {
    return {
      ...verdict('not_in_tree',
        'The receipt is not in the official tree of this election. Check that it is the whole receipt you were given for this election.'),
      details: [['Official root', String(results.data.merkle?.root ?? 'missing')],
        ['Official tree size', String(results.data.merkle?.tree_size ?? 'missing')]],
    };
  }
  if (proof.status === 400) {
    return verdict('invalid_receipt', 'The server did not accept this receipt: a receipt is 64 characters, each 0–9 or a–f.');
  }
  if (!proof.ok) return verdict('unavailable', unreachable(proof, 'The proof of your receipt'));
  try {
    return await judgeProof({
      receipt, electionId: election.id, official: results.data, proof: proof.data, options: election.options ?? [],
    });
  } catch (err) {
    if (err?.code === 'insecure') return verdict('insecure', 'This check needs a secure connection (https, or localhost).');
    return verdict('error', `The check could not be completed: ${err?.message || err}.`);
  }
}

function unreachable(res, what) {
  if (res.status === 0) return `${what} could not be fetched: check your connection and try again.`;
  const retry = res.retryAfter != null ? ` Try again in ${Math.max(1, res.retryAfter)} s.` : ' Try again in a moment.';
  return `${what} could not be fetched (HTTP ${res.status}${res.error?.message ? `: ${res.error.message}` : ''}).${retry}`;
}

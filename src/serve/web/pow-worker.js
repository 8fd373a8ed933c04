// Proof-of-work solver, run as a Web Worker so the page stays responsive (docs/design.md §4.2, rule in
// core/src/pow.rs): finds a nonce, a decimal counter, such that
// SHA-256(UTF-8(challenge + ":" + nonce)) starts with `difficulty` zero bits, counted from the
// most significant bit of the first byte.
//
// Protocol: the page posts {challenge, difficulty}; the worker posts
// {type: 'progress', attempts} every PROGRESS_EVERY tries, then {type: 'solved', nonce, attempts}
// (or {type: 'error', message}). The search loop is synchronous, so the page cancels by
// terminating the worker.
//
// SHA-256 is implemented here rather than taken from crypto.subtle: subtle.digest costs a
// promise per hash (several times slower for millions of tiny inputs) and does not exist on a
// page served over plain http from a host other than localhost (not a secure context). The
// full 64-byte blocks of the challenge prefix are hashed once; each try hashes only the tail.

'use strict';

const PROGRESS_EVERY = 5000;

const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const IV = new Int32Array([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);
const W = new Int32Array(64);

/** One SHA-256 compression of the 64 bytes of `bytes` at `offset` into the state `H`. */
function compress(H, bytes, offset) {
  for (let i = 0; i < 16; i++) {
    const j = offset + i * 4;
    W[i] = (bytes[j] << 24) | (bytes[j + 1] << 16) | (bytes[j + 2] << 8) | bytes[j + 3];
  }
  for (let i = 16; i < 64; i++) {
    const x = W[i - 15];
    const y = W[i - 2];
    const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
    const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
    W[i] = (W[i - 16] + s0 + W[i - 7] + s1) | 0;
  }
  let a = H[0];
  let b = H[1];
  let c = H[2];
  let d = H[3];
  let e = H[4];
  let f = H[5];
  let g = H[6];
  let h = H[7];
  for (let i = 0; i < 64; i++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const ch = (e & f) ^ (~e & g);
    const t1 = (h + S1 + ch + K[i] + W[i]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const maj = (a & b) ^ (a & c) ^ (b & c);
    h = g;
    g = f;
    f = e;
    e = (d + t1) | 0;
    d = c;
    c = b;
    b = a;
    a = (t1 + S0 + maj) | 0;
  }
  H[0] = (H[0] + a) | 0;
  H[1] = (H[1] + b) | 0;
  H[2] = (H[2] + c) | 0;
  H[3] = (H[3] + d) | 0;
  H[4] = (H[4] + e) | 0;
  H[5] = (H[5] + f) | 0;
  H[6] = (H[6] + g) | 0;
  H[7] = (H[7] + h) | 0;
}

/** Leading zero bits of the digest held in the state words `H`. */
function leadingZeroBits(H) {
  let bits = 0;
  for (let i = 0; i < 8; i++) {
    const z = Math.clz32(H[i]);
    bits += z;
    if (z < 32) break;
  }
  return bits;
}

/**
 * Searches nonces start, start+1, … and returns {nonce, attempts, digest}; `onProgress` is
 * called with the attempts so far every PROGRESS_EVERY tries.
 */
function solve(challenge, difficulty, onProgress = () => {}, start = 0) {
  const prefix = new TextEncoder().encode(`${challenge}:`);
  const fullBlocks = prefix.length - (prefix.length % 64);
  const mid = new Int32Array(IV);
  for (let off = 0; off < fullBlocks; off += 64) compress(mid, prefix, off);
  const tail = prefix.subarray(fullBlocks); // < 64 bytes
  // Tail (< 64) + nonce (≤ 16 digits for any safe integer) + 0x80 + zeros + 8-byte length.
  const buf = new Uint8Array(192);
  buf.set(tail);
  const H = new Int32Array(8);
  for (let n = start, attempts = 1; ; n++, attempts++) {
    const nonce = String(n);
    let len = tail.length;
    for (let i = 0; i < nonce.length; i++) buf[len++] = nonce.charCodeAt(i);
    const bits = (prefix.length + nonce.length) * 8;
    buf[len++] = 0x80;
    const end = Math.ceil((len + 8) / 64) * 64;
    buf.fill(0, len, end - 4); // zeros, and the high half of the 64-bit length (always 0)
    buf[end - 4] = bits >>> 24;
    buf[end - 3] = (bits >>> 16) & 0xff;
    buf[end - 2] = (bits >>> 8) & 0xff;
    buf[end - 1] = bits & 0xff;
    H.set(mid);
    for (let off = 0; off < end; off += 64) compress(H, buf, off);
    if (leadingZeroBits(H) >= difficulty) {
      const digest = Array.from(H, (w) => (w >>> 0).toString(16).padStart(8, '0')).join('');
      return { nonce, attempts, digest };
    }
    if (attempts % PROGRESS_EVERY === 0) onProgress(attempts);
  }
}

// As a worker: answer the page. (Also loadable outside a worker, e.g. to test `solve`.)
if (typeof self !== 'undefined' && typeof self.postMessage === 'function' && typeof document === 'undefined') {
  self.onmessage = (event) => {
    const { challenge, difficulty } = event.data ?? {};
    if (typeof challenge !== 'string' || !Number.isInteger(difficulty) || difficulty < 0 || difficulty > 256) {
      self.postMessage({ type: 'error', message: 'invalid challenge' });
      return;
    }
    const found = solve(challenge, difficulty, (attempts) => self.postMessage({ type: 'progress', attempts }));
    self.postMessage({ type: 'solved', nonce: found.nonce, attempts: found.attempts });
  };
}

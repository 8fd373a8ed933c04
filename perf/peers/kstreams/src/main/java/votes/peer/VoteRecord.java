package votes.peer;

import java.nio.charset.StandardCharsets;

/**
 * Strict decoder of the vote record, version 1 (core/src/record.rs, DESIGN §4.4). All integers
 * big-endian, strings prefixed with a u16 length:
 *
 * <pre>
 * version u8 (=1) | election (2 + 1..=64 [a-z0-9-]) | voter u64 | option (2 + 1..=32 [a-z0-9-])
 *   | received_at_ms u64 | node (2 + 0..=64 bytes UTF-8) | core u16 | nonce 16 bytes
 * </pre>
 *
 * Unknown versions, invalid ids, short input and trailing bytes are all rejected
 * ({@link #decode} returns null). Only the fields the peer needs are kept.
 */
final class VoteRecord {
  static final int VERSION = 1;
  static final int ELECTION_MAX = 64;
  static final int OPTION_MAX = 32;
  static final int NODE_MAX = 64;

  final String election;
  final long voter;
  final String option;

  VoteRecord(String election, long voter, String option) {
    this.election = election;
    this.voter = voter;
    this.option = option;
  }

  /** The record, or null when the bytes are not a valid version-1 record. */
  static VoteRecord decode(byte[] b) {
    if (b == null || b.length == 0 || (b[0] & 0xff) != VERSION) return null;
    int[] pos = {1};
    String election = slug(b, pos, ELECTION_MAX);
    if (election == null) return null;
    if (remaining(b, pos) < 8) return null;
    long voter = u64(b, pos[0]);
    pos[0] += 8;
    String option = slug(b, pos, OPTION_MAX);
    if (option == null) return null;
    if (remaining(b, pos) < 8) return null; // received_at_ms
    pos[0] += 8;
    if (remaining(b, pos) < 2) return null;
    int nodeLen = u16(b, pos[0]);
    pos[0] += 2;
    if (nodeLen > NODE_MAX || remaining(b, pos) < nodeLen) return null;
    if (!validUtf8(b, pos[0], nodeLen)) return null;
    pos[0] += nodeLen;
    if (remaining(b, pos) < 2 + 16) return null; // core, nonce
    pos[0] += 2 + 16;
    if (pos[0] != b.length) return null; // trailing bytes
    return new VoteRecord(election, voter, option);
  }

  /** Encodes a version-1 record (used by the test-input generator). */
  static byte[] encode(
      String election, long voter, String option, long receivedAtMs, String node, int core,
      byte[] nonce) {
    byte[] e = election.getBytes(StandardCharsets.US_ASCII);
    byte[] o = option.getBytes(StandardCharsets.US_ASCII);
    byte[] n = node.getBytes(StandardCharsets.UTF_8);
    java.nio.ByteBuffer buf =
        java.nio.ByteBuffer.allocate(1 + 2 + e.length + 8 + 2 + o.length + 8 + 2 + n.length + 2 + 16);
    buf.put((byte) VERSION);
    buf.putShort((short) e.length).put(e);
    buf.putLong(voter);
    buf.putShort((short) o.length).put(o);
    buf.putLong(receivedAtMs);
    buf.putShort((short) n.length).put(n);
    buf.putShort((short) core);
    buf.put(nonce, 0, 16);
    return buf.array();
  }

  private static int remaining(byte[] b, int[] pos) {
    return b.length - pos[0];
  }

  private static String slug(byte[] b, int[] pos, int max) {
    if (remaining(b, pos) < 2) return null;
    int len = u16(b, pos[0]);
    pos[0] += 2;
    if (len < 1 || len > max || remaining(b, pos) < len) return null;
    for (int i = pos[0]; i < pos[0] + len; i++) {
      int c = b[i] & 0xff;
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return null;
    }
    String s = new String(b, pos[0], len, StandardCharsets.US_ASCII);
    pos[0] += len;
    return s;
  }

  private static int u16(byte[] b, int at) {
    return ((b[at] & 0xff) << 8) | (b[at + 1] & 0xff);
  }

  static long u64(byte[] b, int at) {
    long v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | (b[at + i] & 0xffL);
    return v;
  }

  private static boolean validUtf8(byte[] b, int off, int len) {
    try {
      StandardCharsets.UTF_8
          .newDecoder()
          .onMalformedInput(java.nio.charset.CodingErrorAction.REPORT)
          .onUnmappableCharacter(java.nio.charset.CodingErrorAction.REPORT)
          .decode(java.nio.ByteBuffer.wrap(b, off, len));
      return true;
    } catch (java.nio.charset.CharacterCodingException e) {
      return false;
    }
  }
}

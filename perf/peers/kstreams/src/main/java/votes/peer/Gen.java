package votes.peer;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.TreeMap;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Test input for the peer (not part of the measurement): creates TOPIC and writes N records
 * keyed by voter (8 bytes big-endian), each a vote record v1, with duplicate voters and a few
 * invalid records; partitioned by the default partitioner on the key, so a voter's records are
 * all in one partition, in send order. Writes the expected tallies (first record per
 * (election, voter)) as {"election":{"option":count}} and prints the expected invalid count.
 *
 * <pre>
 * java -jar peer-kstreams.jar gen --brokers B --topic T --records 200000 --voters 150000
 *      [--partitions 8] [--options 3] [--elections 1] [--invalid 0] [--seed 1]
 *      [--transactional true] --expected-out FILE.json
 * </pre>
 */
final class Gen {
  public static void main(String[] argv) throws Exception {
    Map<String, String> a = Harness.Args.parse(argv);
    String brokers = a.getOrDefault("--brokers", "127.0.0.1:9092");
    String topic = Harness.Args.required(a, "--topic");
    int records = Integer.parseInt(Harness.Args.required(a, "--records"));
    int voters = Integer.parseInt(Harness.Args.required(a, "--voters"));
    int partitions = Integer.parseInt(a.getOrDefault("--partitions", "8"));
    int options = Integer.parseInt(a.getOrDefault("--options", "3"));
    int elections = Integer.parseInt(a.getOrDefault("--elections", "1"));
    int invalid = Integer.parseInt(a.getOrDefault("--invalid", "0"));
    long seed = Long.parseLong(a.getOrDefault("--seed", "1"));
    boolean transactional = Boolean.parseBoolean(a.getOrDefault("--transactional", "true"));
    String expectedOut = Harness.Args.required(a, "--expected-out");
    int valid = records - invalid;
    if (voters > valid) Harness.die("--voters must be <= --records - --invalid");

    Random rnd = new Random(seed);
    // valid slots: every voter once, then repeats of random voters; shuffled
    int[] who = new int[valid];
    for (int i = 0; i < valid; i++) who[i] = i < voters ? i : rnd.nextInt(voters);
    for (int i = valid - 1; i > 0; i--) {
      int j = rnd.nextInt(i + 1);
      int t = who[i];
      who[i] = who[j];
      who[j] = t;
    }
    boolean[] bad = new boolean[records];
    for (int placed = 0; placed < invalid; ) {
      int i = rnd.nextInt(records);
      if (!bad[i]) {
        bad[i] = true;
        placed++;
      }
    }

    Properties ap = new Properties();
    ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    try (Admin admin = Admin.create(ap)) {
      admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
    }
    Properties pp = new Properties();
    pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    pp.put(ProducerConfig.ACKS_CONFIG, "all");
    pp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    pp.put(ProducerConfig.LINGER_MS_CONFIG, 5);
    pp.put(ProducerConfig.BATCH_SIZE_CONFIG, 65536);
    if (transactional) pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "gen-" + topic);

    TreeMap<String, TreeMap<String, Long>> expected = new TreeMap<>();
    Set<String> seen = new HashSet<>();
    byte[] nonce = new byte[16];
    long now = System.currentTimeMillis();
    try (KafkaProducer<byte[], byte[]> producer =
        new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer())) {
      if (transactional) {
        producer.initTransactions();
        producer.beginTransaction();
      }
      int v = 0;
      for (int i = 0; i < records; i++) {
        long voter;
        byte[] value;
        rnd.nextBytes(nonce);
        String election = "election-" + rnd.nextInt(elections);
        String option = "opt-" + rnd.nextInt(options);
        if (bad[i]) {
          voter = mix(seed, rnd.nextInt(voters));
          byte[] ok = VoteRecord.encode(election, voter, option, now + i, "gen", 0, nonce);
          switch (i % 4) {
            case 0 -> { ok[0] = 2; value = ok; } // unknown version
            case 1 -> { value = java.util.Arrays.copyOf(ok, ok.length + 1); } // trailing byte
            case 2 -> { value = java.util.Arrays.copyOf(ok, ok.length - 1); } // truncated
            default -> value = VoteRecord.encode("Bad_Election", voter, option, now + i, "gen", 0, nonce);
          }
        } else {
          voter = mix(seed, who[v++]);
          value = VoteRecord.encode(election, voter, option, now + i, "node-" + (i % 3), i % 2, nonce);
          if (seen.add(election + "/" + voter)) {
            expected.computeIfAbsent(election, k -> new TreeMap<>()).merge(option, 1L, Long::sum);
          }
        }
        byte[] key = ByteBuffer.allocate(8).putLong(voter).array();
        producer.send(new ProducerRecord<>(topic, key, value));
        if (transactional && (i + 1) % 5000 == 0) {
          producer.commitTransaction();
          producer.beginTransaction();
        }
      }
      if (transactional) producer.commitTransaction();
      producer.flush();
    }
    StringBuilder j = new StringBuilder("{");
    boolean fe = true;
    for (var e : expected.entrySet()) {
      if (!fe) j.append(',');
      fe = false;
      j.append('"').append(e.getKey()).append("\":{");
      boolean fo = true;
      for (var o : e.getValue().entrySet()) {
        if (!fo) j.append(',');
        fo = false;
        j.append('"').append(o.getKey()).append("\":").append(o.getValue());
      }
      j.append('}');
    }
    j.append("}\n");
    Path p = Path.of(expectedOut);
    if (p.getParent() != null) Files.createDirectories(p.getParent());
    Files.writeString(p, j.toString());
    System.err.printf("gen: %d records (%d invalid, %d first votes) into %s; expected tallies in %s%n",
        records, invalid, seen.size(), topic, expectedOut);
  }

  /** A voter id spread over the whole u64 range (splitmix64 of seed and index). */
  private static long mix(long seed, long i) {
    long z = seed * 0x9E3779B97F4A7C15L + i * 0xBF58476D1CE4E5B9L + 0x94D049BB133111EBL;
    z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
    z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
    return z ^ (z >>> 31);
  }
}

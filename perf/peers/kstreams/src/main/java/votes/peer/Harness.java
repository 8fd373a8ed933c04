package votes.peer;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ListOffsetsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.LongDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * Runs the Kafka Streams peer over an input topic that already holds N vote records and
 * measures it: wall time from the first processed record until processed == N and the
 * consumer group (= application id) committed the input topic's end offsets and then the
 * repartition topic's (only then are the counts of every first vote committed); CPU-seconds of
 * this JVM and of the given broker processes over the same interval (utime + stime of
 * /proc/PID/stat). Then reads the final counts from the output topic (read_committed) and
 * writes the JSON report. Also the jar's entry point for {@code gen} (see {@link Gen}).
 *
 * <pre>
 * java -jar peer-kstreams.jar --brokers B --input TOPIC --records N --app-id ID --state-dir DIR
 *      [--threads 2] [--out FILE.json] [--broker-pids "pid pid"] [--timeout-s 600] [--keep-topics]
 * java -jar peer-kstreams.jar gen ...   writes a test input topic (Gen)
 * </pre>
 */
public final class Harness {
  public static void main(String[] argv) throws Exception {
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
    // UNKNOWN_TOPIC_OR_PARTITION while Streams creates its internal topics at start-up
    System.setProperty("org.slf4j.simpleLogger.log.org.apache.kafka.clients.NetworkClient", "error");
    if (argv.length > 0 && argv[0].equals("gen")) {
      Gen.main(java.util.Arrays.copyOfRange(argv, 1, argv.length));
      return;
    }
    Map<String, String> a = Args.parse(argv, "--keep-topics");
    String brokers = a.getOrDefault("--brokers", "127.0.0.1:9092");
    String input = Args.required(a, "--input");
    long records = Long.parseLong(Args.required(a, "--records"));
    String appId = Args.required(a, "--app-id");
    String stateDir = Args.required(a, "--state-dir");
    int threads = Integer.parseInt(a.getOrDefault("--threads", "2"));
    String out = a.get("--out");
    List<Integer> brokerPids = new ArrayList<>();
    for (String p : a.getOrDefault("--broker-pids", "").trim().split("[\\s,]+")) {
      if (!p.isEmpty()) brokerPids.add(Integer.parseInt(p));
    }
    long timeoutS = Long.parseLong(a.getOrDefault("--timeout-s", "600"));
    boolean keepTopics = a.containsKey("--keep-topics");
    String output = appId + "-counts";
    long clkTck = clkTck();

    Properties adminProps = new Properties();
    adminProps.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    try (Admin admin = Admin.create(adminProps)) {
      TopicDescription desc =
          admin.describeTopics(List.of(input)).allTopicNames().get().get(input);
      List<TopicPartition> inputParts = new ArrayList<>();
      desc.partitions().forEach(p -> inputParts.add(new TopicPartition(input, p.partition())));
      // Written by the first-vote processor, read by the count: same partition count as the
      // input (Streams' default for a repartition topic).
      String repartition = appId + "-" + VotesTopology.REPARTITION + "-repartition";
      List<TopicPartition> repartitionParts = new ArrayList<>();
      for (TopicPartition tp : inputParts)
        repartitionParts.add(new TopicPartition(repartition, tp.partition()));
      try {
        admin.createTopics(List.of(new NewTopic(output, inputParts.size(), (short) 1))).all().get();
      } catch (ExecutionException e) {
        if (!(e.getCause() instanceof TopicExistsException)) throw e;
      }

      AtomicLong processed = new AtomicLong();
      AtomicLong firstAtNanos = new AtomicLong();
      AtomicReference<Throwable> failure = new AtomicReference<>();
      Properties p = new Properties();
      p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
      p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
      p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
      p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
      p.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
      p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1); // one broker
      // commit.interval.ms: left at the EOS default (100 ms); state stores: RocksDB with
      // changelogs (defaults).
      p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

      // CPU at the first processed record is read by the thread that processes it.
      long[] cpuStart = new long[1 + brokerPids.size()];
      AtomicLong firstCpuReady = new AtomicLong();
      KafkaStreams streams =
          new KafkaStreams(
              VotesTopology.build(
                  input,
                  output,
                  processed,
                  firstAtNanos,
                  () -> {
                    cpuStart[0] = cpuTicks("self");
                    for (int i = 0; i < brokerPids.size(); i++)
                      cpuStart[i + 1] = cpuTicks(String.valueOf(brokerPids.get(i)));
                    firstCpuReady.set(1);
                  }),
              p);
      streams.setUncaughtExceptionHandler(
          e -> {
            failure.compareAndSet(null, e);
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
          });
      long startNanos = System.nanoTime();
      streams.start();

      long deadline = startNanos + timeoutS * 1_000_000_000L;
      long nextProgress = startNanos + 1_000_000_000L;
      long lastProcessed = 0;
      long doneNanos = 0;
      String missing = "";
      ListOffsetsOptions committedOnly = new ListOffsetsOptions(IsolationLevel.READ_COMMITTED);
      while (true) {
        long now = System.nanoTime();
        long n = processed.get();
        if (n >= records) {
          // The input's offsets first: once they are committed, so is everything the first
          // sub-topology wrote to the repartition topic (same transactions); then the
          // repartition topic's, which the counting sub-topology commits with its counts.
          missing = offsetsBehind(admin, appId, inputParts, committedOnly);
          if (missing.isEmpty()) {
            missing = offsetsBehind(admin, appId, repartitionParts, committedOnly);
          }
          if (missing.isEmpty()) {
            doneNanos = System.nanoTime();
            break;
          }
        } else {
          missing = "processed " + n + " of " + records + " input records";
        }
        if (failure.get() != null || streams.state() == KafkaStreams.State.ERROR
            || streams.state() == KafkaStreams.State.NOT_RUNNING) {
          streams.close(Duration.ofSeconds(30));
          die("streams app failed (state " + streams.state() + "): " + failure.get()
              + "; missing: " + missing);
        }
        if (now >= deadline) {
          streams.close(Duration.ofSeconds(30));
          deleteTopics(admin, appId, output, keepTopics);
          die("timeout after " + timeoutS + " s: " + missing);
        }
        if (now >= nextProgress) {
          System.err.printf(Locale.ROOT, "[kstreams] %5.1fs processed %d/%d (%d/s) state %s%s%n",
              (now - startNanos) / 1e9, n, records, n - lastProcessed, streams.state(),
              n >= records ? " waiting: " + missing : "");
          lastProcessed = n;
          nextProgress += 1_000_000_000L;
        }
        Thread.sleep(200);
      }
      long jvmEnd = cpuTicks("self");
      long brokerTicks = 0;
      for (int i = 0; i < brokerPids.size(); i++)
        brokerTicks += cpuTicks(String.valueOf(brokerPids.get(i))) - cpuStart[i + 1];
      while (firstCpuReady.get() == 0) Thread.sleep(1);
      double wallS = (doneNanos - firstAtNanos.get()) / 1e9;
      double jvmCpuS = (jvmEnd - cpuStart[0]) / (double) clkTck;
      double brokerCpuS = brokerTicks / (double) clkTck;
      System.err.printf(Locale.ROOT, "[kstreams] done: %d records in %.3f s; closing%n",
          records, wallS);
      streams.close(Duration.ofSeconds(60)); // the caller deletes the state dir

      Map<String, Long> counts = readCounts(brokers, output);
      deleteTopics(admin, appId, output, keepTopics);

      long invalid = counts.getOrDefault(VotesTopology.INVALID_KEY, 0L);
      TreeMap<String, TreeMap<String, Long>> tallies = new TreeMap<>();
      long firstVotes = 0;
      for (Map.Entry<String, Long> e : counts.entrySet()) {
        if (e.getKey().equals(VotesTopology.INVALID_KEY)) continue;
        int slash = e.getKey().indexOf('/');
        tallies.computeIfAbsent(e.getKey().substring(0, slash), k -> new TreeMap<>())
            .put(e.getKey().substring(slash + 1), e.getValue());
        firstVotes += e.getValue();
      }
      double cpuS = jvmCpuS + brokerCpuS;
      StringBuilder j = new StringBuilder();
      j.append("{\"peer\":\"kafka-streams-eos-v2\"");
      j.append(",\"records\":").append(records);
      j.append(",\"first_votes\":").append(firstVotes);
      j.append(",\"invalid\":").append(invalid);
      j.append(",\"wall_s\":").append(fmt(wallS));
      j.append(",\"votes_per_s\":").append(fmt(records / wallS));
      j.append(",\"jvm_cpu_s\":").append(fmt(jvmCpuS));
      j.append(",\"broker_cpu_s\":").append(fmt(brokerCpuS));
      j.append(",\"cpu_s\":").append(fmt(cpuS));
      j.append(",\"votes_per_cpu_s\":").append(cpuS > 0 ? fmt(records / cpuS) : "null");
      j.append(",\"threads\":").append(threads);
      j.append(",\"clk_tck\":").append(clkTck);
      j.append(",\"broker_pids\":").append(brokerPids);
      j.append(",\"tallies\":{");
      boolean firstE = true;
      for (Map.Entry<String, TreeMap<String, Long>> e : tallies.entrySet()) {
        if (!firstE) j.append(',');
        firstE = false;
        j.append('"').append(e.getKey()).append("\":{");
        boolean firstO = true;
        for (Map.Entry<String, Long> o : e.getValue().entrySet()) {
          if (!firstO) j.append(',');
          firstO = false;
          j.append('"').append(o.getKey()).append("\":").append(o.getValue());
        }
        j.append('}');
      }
      j.append("}}\n");
      if (out != null) {
        Path path = Path.of(out);
        if (path.getParent() != null) Files.createDirectories(path.getParent());
        Files.writeString(path, j.toString());
      } else {
        System.out.print(j);
      }
    }
  }

  /** "" when the group committed every input partition's end offset, else what is behind. */
  private static String offsetsBehind(
      Admin admin, String group, List<TopicPartition> parts, ListOffsetsOptions opts)
      throws Exception {
    Map<TopicPartition, OffsetSpec> specs = new HashMap<>();
    for (TopicPartition tp : parts) specs.put(tp, OffsetSpec.latest());
    var ends = admin.listOffsets(specs, opts).all().get();
    Map<TopicPartition, OffsetAndMetadata> committed =
        admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
    StringBuilder behind = new StringBuilder();
    for (TopicPartition tp : parts) {
      long end = ends.get(tp).offset();
      OffsetAndMetadata c = committed.get(tp);
      long at = c == null ? 0 : c.offset(); // nothing committed: at the start (an empty partition is done)
      if (at < end) {
        behind.append(behind.length() == 0 ? "group offsets behind end offsets:" : ",")
            .append(' ').append(tp.partition()).append(" (committed ")
            .append(c == null ? "none" : String.valueOf(at)).append(", end ").append(end)
            .append(')');
      }
    }
    return behind.toString();
  }

  /** The latest count per key of the output topic, read_committed, up to its end. */
  private static Map<String, Long> readCounts(String brokers, String topic) {
    Properties c = new Properties();
    c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    c.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
    Map<String, Long> counts = new HashMap<>();
    try (KafkaConsumer<String, Long> consumer =
        new KafkaConsumer<>(c, new StringDeserializer(), new LongDeserializer())) {
      List<TopicPartition> parts = new ArrayList<>();
      consumer.partitionsFor(topic).forEach(pi -> parts.add(new TopicPartition(topic, pi.partition())));
      consumer.assign(parts);
      consumer.seekToBeginning(parts);
      Map<TopicPartition, Long> ends = consumer.endOffsets(parts); // LSO under read_committed
      long deadline = System.nanoTime() + 120_000_000_000L;
      while (true) {
        boolean caughtUp = true;
        for (TopicPartition tp : parts) if (consumer.position(tp) < ends.get(tp)) caughtUp = false;
        if (caughtUp) break;
        if (System.nanoTime() > deadline) die("timeout reading the output topic " + topic);
        for (ConsumerRecord<String, Long> r : consumer.poll(Duration.ofMillis(500))) {
          if (r.value() == null) counts.remove(r.key());
          else counts.put(r.key(), r.value());
        }
      }
    }
    return counts;
  }

  /** Deletes the output topic and the app's internal topics (repartition, changelogs). */
  private static void deleteTopics(Admin admin, String appId, String output, boolean keep)
      throws Exception {
    if (keep) return;
    List<String> doomed = new ArrayList<>();
    for (String t : admin.listTopics().names().get())
      if (t.equals(output) || (t.startsWith(appId + "-")
          && (t.endsWith("-changelog") || t.endsWith("-repartition")))) doomed.add(t);
    if (!doomed.isEmpty()) admin.deleteTopics(doomed).all().get();
  }

  /** utime + stime (fields 14 and 15) of /proc/PID/stat, in clock ticks. */
  static long cpuTicks(String pid) {
    try {
      String s = Files.readString(Path.of("/proc", pid, "stat"));
      String[] f = s.substring(s.lastIndexOf(')') + 2).split(" ");
      // f[0] is field 3 (state), so field k is f[k - 3]
      return Long.parseLong(f[11]) + Long.parseLong(f[12]);
    } catch (IOException e) {
      throw new RuntimeException("cannot read /proc/" + pid + "/stat: " + e.getMessage());
    }
  }

  /** `getconf CLK_TCK` once; 100 (Linux's usual value) if that cannot run. */
  private static long clkTck() {
    try {
      Process pr = new ProcessBuilder("getconf", "CLK_TCK").redirectErrorStream(true).start();
      try (BufferedReader r =
          new BufferedReader(new InputStreamReader(pr.getInputStream(), StandardCharsets.UTF_8))) {
        String line = r.readLine();
        if (pr.waitFor() == 0 && line != null) return Long.parseLong(line.trim());
      }
    } catch (Exception ignored) {
      // fall through
    }
    System.err.println("[kstreams] getconf CLK_TCK failed; assuming 100 ticks/s");
    return 100;
  }

  private static String fmt(double d) {
    return String.format(Locale.ROOT, "%.3f", d);
  }

  static void die(String msg) {
    System.err.println("peer-kstreams: error: " + msg);
    System.exit(2);
  }

  /** --flag value pairs; flags named in `bare` take no value. */
  static final class Args {
    static Map<String, String> parse(String[] argv, String... bare) {
      Map<String, String> m = new HashMap<>();
      List<String> bareList = List.of(bare);
      for (int i = 0; i < argv.length; i++) {
        String k = argv[i];
        if (!k.startsWith("--")) die("unexpected argument " + k);
        if (bareList.contains(k)) {
          m.put(k, "");
        } else {
          if (i + 1 >= argv.length) die(k + " needs a value");
          m.put(k, argv[++i]);
        }
      }
      return m;
    }

    static String required(Map<String, String> m, String k) {
      String v = m.get(k);
      if (v == null) die(k + " is required");
      return v;
    }
  }
}

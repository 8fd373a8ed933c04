package votes.peer;

import java.nio.charset.StandardCharsets;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The topology of the peer:
 *
 * <pre>
 * input (key voter u64, value vote record v1)
 *   -> first-vote processor: decode strictly; a persistent KeyValueStore "first-votes" keyed by
 *      election bytes + voter (8 bytes) forwards only the first record of each (election, voter)
 *      in partition order, re-keyed "election/option"; invalid records are forwarded under the
 *      key "!invalid" ('!' is not in [a-z0-9-], so it never collides), so that their number is
 *      also counted exactly once
 *   -> groupByKey (repartition topic) -> count (KTable, persistent store "counts")
 *   -> output topic (key "election/option" UTF-8, value count i64)
 * </pre>
 */
final class VotesTopology {
  static final String DEDUP_STORE = "first-votes";
  static final String COUNT_STORE = "counts";
  static final String INVALID_KEY = "!invalid";
  /** The repartition topic is APP_ID-by-option-repartition. */
  static final String REPARTITION = "by-option";
  private static final byte[] SEEN = {1};

  private VotesTopology() {}

  /** processed: incremented once per input record handed to the processor (all threads). */
  static Topology build(
      String input, String output, AtomicLong processed, AtomicLong firstAtNanos,
      Runnable onFirst) {
    StreamsBuilder builder = new StreamsBuilder();
    builder.addStateStore(
        Stores.keyValueStoreBuilder(
            Stores.persistentKeyValueStore(DEDUP_STORE), Serdes.Bytes(), Serdes.ByteArray()));
    builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
        .process(() -> new FirstVote(processed, firstAtNanos, onFirst), DEDUP_STORE)
        .groupByKey(Grouped.with(REPARTITION, Serdes.String(), Serdes.ByteArray()))
        .count(Materialized.<String, Long, KeyValueStore<Bytes, byte[]>>as(COUNT_STORE)
            .withKeySerde(Serdes.String())
            .withValueSerde(Serdes.Long()))
        .toStream()
        .to(output, Produced.with(Serdes.String(), Serdes.Long()));
    return builder.build();
  }

  static final class FirstVote implements Processor<byte[], byte[], String, byte[]> {
    private final AtomicLong processed;
    private final AtomicLong firstAtNanos;
    private final Runnable onFirst;
    private ProcessorContext<String, byte[]> ctx;
    private KeyValueStore<Bytes, byte[]> seen;

    FirstVote(AtomicLong processed, AtomicLong firstAtNanos, Runnable onFirst) {
      this.processed = processed;
      this.firstAtNanos = firstAtNanos;
      this.onFirst = onFirst;
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
      this.ctx = context;
      this.seen = context.getStateStore(DEDUP_STORE);
    }

    @Override
    public void process(Record<byte[], byte[]> rec) {
      if (firstAtNanos.get() == 0 && firstAtNanos.compareAndSet(0, System.nanoTime())) {
        onFirst.run(); // the harness reads the CPU counters of the start of the measurement
      }
      try {
        VoteRecord v = VoteRecord.decode(rec.value());
        if (v == null) {
          ctx.forward(rec.withKey(INVALID_KEY).withValue(SEEN));
          return;
        }
        byte[] e = v.election.getBytes(StandardCharsets.US_ASCII);
        byte[] k = new byte[e.length + 8];
        System.arraycopy(e, 0, k, 0, e.length);
        for (int i = 0; i < 8; i++) k[e.length + i] = (byte) (v.voter >>> (56 - 8 * i));
        Bytes key = Bytes.wrap(k);
        if (seen.get(key) != null) return;
        seen.put(key, SEEN);
        ctx.forward(rec.withKey(v.election + "/" + v.option).withValue(SEEN));
      } finally {
        processed.incrementAndGet();
      }
    }
  }
}

package bench.probe;

import java.util.ArrayList;
import java.util.List;
import org.apache.spark.api.java.function.MapFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.StatefulProcessor;
import org.apache.spark.sql.streaming.TTLConfig;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.streaming.TimerValues;
import org.apache.spark.sql.streaming.ValueState;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;

/**
 * bench/probe_state_store.py: one anchor (the earliest ts) per key in the streaming state store,
 * with the processor in the JVM. A measurement of a design, not pipeline code: the wheel does not carry it.
 */
public class ProbeAnchors extends StatefulProcessor<String, Row, Row> {
  static final StructType OUT = new StructType()
      .add("key", DataTypes.StringType).add("ts", DataTypes.LongType).add("anchor", DataTypes.LongType);
  private transient ValueState<Long> anchor;

  @Override
  public void init(OutputMode outputMode, TimeMode timeMode) {
    anchor = getHandle().getValueState("anchor", Encoders.LONG(), TTLConfig.NONE());
  }

  @Override
  public scala.collection.Iterator<Row> handleInputRows(String key, scala.collection.Iterator<Row> rows, TimerValues timers) {
    List<Row> in = new ArrayList<>();
    long first = Long.MAX_VALUE;
    while (rows.hasNext()) {
      Row r = rows.next();
      in.add(r);
      first = Math.min(first, r.getLong(1));
    }
    long at = anchor.exists() ? Math.min(anchor.get(), first) : first;
    anchor.update(at);
    List<Row> out = new ArrayList<>(in.size());
    for (Row r : in) {
      out.add(RowFactory.create(key, r.getLong(1), at));
    }
    return scala.jdk.javaapi.CollectionConverters.asScala(out.iterator());
  }

  public static Dataset<Row> apply(Dataset<Row> df) {
    return df.groupByKey((MapFunction<Row, String>) r -> r.getString(0), Encoders.STRING())
        .transformWithState(new ProbeAnchors(), TimeMode.None(), OutputMode.Append(), Encoders.row(OUT));
  }
}

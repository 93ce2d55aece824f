"""Stream monitoring: a StreamingQueryListener records every micro-batch in
ops.stream_metrics; `lakehouse status` reads it against the SLOs in pipelines/conf/slo.yaml."""

"""What an operator watches: Prometheus metrics (`metrics`) and OpenTelemetry traces
(`tracing`, imported only when tracing is on)."""

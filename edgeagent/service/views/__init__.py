"""What operators see: the heartbeat, Prometheus metrics, Home Assistant discovery."""

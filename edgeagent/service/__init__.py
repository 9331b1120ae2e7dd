"""The daemon: lifecycle, admission, the task queue and store, delivery, telemetry, systemd."""

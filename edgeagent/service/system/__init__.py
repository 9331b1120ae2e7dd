"""Glue to the system: systemd notify, journald, logging and redaction, the board."""

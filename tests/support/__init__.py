"""Helpers shared by the tests: real brokers, daemon processes, configs, catalogs."""

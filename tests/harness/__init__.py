"""Test harnesses that need real operating-system resources (root, containers)."""

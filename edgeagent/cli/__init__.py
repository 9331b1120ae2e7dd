"""Command line tools on top of the packages: ask, run, submit, status, bench."""

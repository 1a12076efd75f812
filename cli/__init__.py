"""The command line: argument parsing, progress, messages and exit codes (no numerics)."""

"""Thin command-line shells: parse, call one library function, map errors to exit codes."""

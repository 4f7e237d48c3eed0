"""Typed records that cross a process boundary: what one process writes and another reads."""

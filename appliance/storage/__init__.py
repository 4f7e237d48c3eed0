"""What the daemon keeps on disk besides the cache: the answer ledger, and which stores can still be written."""

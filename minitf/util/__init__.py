"""Shared by every part: ``files`` (the one atomic write, file hashes, the cache folder), ``fmt`` (how numbers
are written: plurals, thousands, SI, bytes, durations, "–") and ``progress`` (the progress display)."""

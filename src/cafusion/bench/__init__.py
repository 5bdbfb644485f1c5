"""Benchmarks of the block: the image table, the shape sweep, bf16 autocast and whole networks (``cafusion bench``)."""

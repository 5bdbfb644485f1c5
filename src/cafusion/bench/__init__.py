"""Benchmarks of the block: ``block`` compares the fast path with the reference, timm and torch.compile."""

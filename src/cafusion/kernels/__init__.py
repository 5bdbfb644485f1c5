"""The fast path: one operator (``op``) with a kernel per backend (``backends``: native C++ on the CPU,
Triton on CUDA, plain PyTorch anywhere). ``cafusion.dispatch`` decides when the op runs."""

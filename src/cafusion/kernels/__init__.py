"""The fast path: fused custom ops (``op``), the small path's hand-written backward (``small``), and the
big-tensor primitives per backend (``cpu``; ``triton_ops`` on CUDA), chosen by ``dispatch``."""

IMPLS = ("auto", "fast", "reference")

__all__ = ["IMPLS"]

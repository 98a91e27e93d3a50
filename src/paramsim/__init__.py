"""paramsim: how similar trained networks are, from their weights alone (LPS, Wang et al. 2019)."""

import os

# PyTorch's CPU allocator hands each large tensor fresh 4 KB pages unless this is set, and
# faulting them in costs more than the arithmetic of the small CNNs paramsim trains and reads
# (an LPS fit on the Fashion-MNIST CNN zoo ran 1.7x faster with it; docs/BENCHMARKS.md).
# PyTorch reads it once, at its first large allocation, so set it before any tensor work; a
# value the user set wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

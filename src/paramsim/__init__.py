"""paramsim: how similar trained networks are, from their weights alone (LPS, Wang et al. 2019)."""

import os

# PyTorch's CPU allocator hands each large tensor fresh 4 KB pages unless this is set, and
# faulting them in costs more than the arithmetic of the small CNNs paramsim trains and reads
# (3x on the LPS function branch of a Fashion-MNIST CNN zoo; benchmarks/bench_alloc.py).
# PyTorch reads it once, at its first large allocation, so set it before any tensor work; a
# value the user set wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

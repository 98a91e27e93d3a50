"""paramsim: how similar trained networks are, from their weights alone (LPS, Wang et al. 2019)."""

__version__ = "0.1.0"

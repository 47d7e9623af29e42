"""meshnode: a service mesh with no servers."""

__version__ = "0.1.0"
__all__ = ["__version__"]

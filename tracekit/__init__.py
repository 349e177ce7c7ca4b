"""tracekit: replay, visualise, diff and fuzz the communication of Mixture-of-Experts models."""

from tracekit._jit import configure_cache
from tracekit.errors import TracekitError

__version__ = "0.1.0"
configure_cache(__version__)  # a numba cache that survives reinstalling this version (tracekit/_jit.py)
__all__ = ["TracekitError", "__version__"]

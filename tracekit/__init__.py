"""tracekit: replay, visualise, diff and fuzz the communication of Mixture-of-Experts models."""

from tracekit.errors import TracekitError

__version__ = "0.1.0"
__all__ = ["TracekitError", "__version__"]

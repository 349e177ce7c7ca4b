"""tracekit: replay, visualise, diff and fuzz the communication of Mixture-of-Experts models.

The public API is the names in ``__all__`` (each documented with a runnable example); everything
else lives in internal modules whose paths may change. A session in five lines:

>>> import tracekit
>>> routing = tracekit.synth("prefill", ep=16, tokens=64)
>>> result = tracekit.replay(routing, "h800-ib", tracekit.ReplayConfig(num_sms=24))
>>> result.summary.dispatch.bottleneck.resource_kind in ("nvlink_tx", "nvlink_rx", "nic_tx", "nic_rx", "sm")
True

(``tracekit.replay`` is the function; the module of the same name is imported with
``from tracekit.replay import ...``.)
"""

__version__ = "0.1.0"

from tracekit._alloc import configure as _configure_allocators  # noqa: E402
from tracekit._jit import configure_cache as _configure_cache  # noqa: E402

_configure_allocators()  # before polars and pyarrow load: freed memory goes back at once (tracekit/_alloc.py)

_configure_cache(__version__)  # before any kernel compiles: a numba cache that survives reinstalling (tracekit/_jit.py)

from tracekit._api import (PhaseConfig, ReplayConfig, ReplayResult, Routing, Summary, SynthConfig,  # noqa: E402
                           TracekitError, diff, load_profile, load_routing, read_trace, replay, synth, write_trace)

__all__ = ["PhaseConfig", "ReplayConfig", "ReplayResult", "Routing", "Summary", "SynthConfig", "TracekitError",
           "__version__", "diff", "load_profile", "load_routing", "read_trace", "replay", "synth", "write_trace"]

"""Regenerate the sample routing traces in this folder with tracekit's public API.

    PYTHONPATH=. python sample_traces/make_samples.py [OUT_DIR]

Writes every file of :data:`SAMPLES` into OUT_DIR (default: this folder). The same tracekit gives
the same bytes; tests/test_samples.py checks that the committed files match.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tracekit.io.tables import write_table
from tracekit.workload.synth import SynthConfig, synth

#: File name -> generator config. Each equals ``tracekit synth`` with the flags in the README.
SAMPLES: dict[str, SynthConfig] = {
    "decode_ep16.parquet": SynthConfig(preset="decode", ep=16, seed=1),
    "decode_ep16_skewed.parquet": SynthConfig(preset="decode", ep=16, skew=0.6, rank_imbalance=0.4, masked=10,
                                              seed=2),
    "prefill_ep16_512.parquet": SynthConfig(preset="prefill", ep=16, tokens=512, seed=3),
    "prefill_ep16_512_skewed.parquet": SynthConfig(preset="prefill", ep=16, tokens=512, skew=0.25, rank_imbalance=0.3,
                                                   seed=4),
    "decode_ep32_4nodes_2x2.parquet": SynthConfig(preset="decode", ep=32, tokens=32, max_nodes=2, layers=2, steps=2,
                                                  seed=5),
}


def main(out_dir: Path) -> None:
    for name, config in SAMPLES.items():
        routing = synth(config)
        path = write_table(routing.to_arrow(), out_dir / name, "routing", routing.meta.to_dict())
        print(f"{path}: {routing.num_rows} rows, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)

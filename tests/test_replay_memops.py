"""The hazard checker on a replay's own memory operations: a ring whose receiver returns credits
before copying out is caught; the same ring with credits returned after the copy is clean."""

from __future__ import annotations

import polars as pl
import pytest

from tracekit.cli import main
from tracekit.errors import TracekitError
from tracekit.hardware import load_profile
from tracekit.hazards import check_trace
from tracekit.io.tables import write_table
from tracekit.model.config import PhaseConfig, ReplayConfig
from tracekit.replay import replay
from tracekit.workload.synth import SynthConfig, synth


def _routing():
    return synth(SynthConfig(preset="decode", ep=4, tokens=64, experts=16, topk=2, gpus_per_node=4, hidden=1024))


def _memops(credit_return: str) -> pl.DataFrame:
    hw = load_profile("generic").with_overrides({"system.gpus_per_node": 4})
    cfg = ReplayConfig(num_sms=2, dispatch=PhaseConfig(2, 4, 2, 4), credit_return=credit_return,
                       min_chunk_tokens=1, record_memops=True)
    return replay(_routing(), hw, cfg).memops


def test_ring_memops_describe_every_delivered_token():
    mo = _memops("after_consume")
    stores = mo.filter((pl.col("op") == "store") & pl.col("var").str.starts_with("ring"))
    loads = mo.filter(pl.col("op") == "load")
    assert stores.height == loads.height > 0
    assert sorted(stores["value"].to_list()) == sorted(loads["value"].to_list())  # every token read once
    assert mo["seq"].to_list() == list(range(mo.height))
    assert mo["ts_ns"].is_sorted()


def test_credits_returned_after_the_copy_are_clean():
    assert check_trace(_memops("after_consume")) == []


def test_credits_returned_early_overwrite_unconsumed_slots():
    hazards = check_trace(_memops("early"))
    happened = {h.name for h in hazards if h.manifest}
    assert "slot_overwrite" in happened
    h = next(h for h in hazards if h.name == "slot_overwrite" and h.manifest)
    assert "ring_from" in h.message and len(h.events) >= 2


def test_cli_record_then_check(tmp_path, capsys):
    r = _routing()
    path = write_table(r.to_arrow(), tmp_path / "r.parquet", "routing", r.meta.to_dict())
    common = ["replay", str(path), "--hardware", "generic", "--set", "system.gpus_per_node=4", "--num-sms", "2",
              "--dispatch-nvl-chunk", "2", "--dispatch-nvl-buffer", "4", "--record-memops", "--quiet",
              "--no-timeline"]
    assert main(common + ["-o", str(tmp_path / "good")]) == 0
    assert main(common + ["--credit-return", "early", "-o", str(tmp_path / "bad")]) == 0
    capsys.readouterr()
    assert main(["fuzz", "--check", str(tmp_path / "good" / "memops.parquet")]) == 0
    assert main(["fuzz", "--check", str(tmp_path / "bad" / "memops.parquet")]) == 1
    out = capsys.readouterr().out
    assert "slot_overwrite" in out


def test_record_memops_refuses_internode(capsys):
    cfg = ReplayConfig(record_memops=True)
    routing = synth(SynthConfig(preset="decode", ep=16, tokens=8, experts=32, topk=2))
    with pytest.raises(TracekitError, match="intranode dispatch"):
        replay(routing, load_profile("h800-ib"), cfg)

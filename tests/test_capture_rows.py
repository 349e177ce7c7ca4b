"""The capture scripts' rows (tools/capture_common.write_rows) load as validation rows and replay.

The scripts themselves need GPUs (tools/capture_deepep.py, tools/capture_nccl_moe.py); what they hand
to the validation set is checked here on the CPU: a routing dump in their format ([ranks, tokens,
topk] .npz) and a rows file written by their writer go through tracekit.validation like committed rows.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tracekit.io.validation_rows import capture_routing
from tracekit.validation import evaluate, replay_command, rows_from_doc

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="module")
def capture_common():
    spec = importlib.util.spec_from_file_location("capture_common", TOOLS / "capture_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dump(path: Path, ranks: int = 2, tokens: int = 64, experts: int = 16, topk: int = 4) -> None:
    rng = np.random.default_rng(0)
    idx = np.stack([np.argsort(-(np.abs(rng.standard_normal((tokens, experts))) + 1), axis=1)[:, :topk]
                    for _ in range(ranks)])
    np.savez_compressed(path, topk_idx=idx.astype(np.int64), topk_weights=np.full(idx.shape, 1 / topk, np.float32),
                        num_experts=np.int64(experts), hidden=np.int64(7168), world_size=np.int64(ranks))


def test_written_rows_load_and_replay_with_their_knobs(tmp_path, capture_common):
    _dump(tmp_path / "routing_t64_bal.npz")
    prov = {"command": "python3 tools/capture_deepep.py run ...", "gpus": ["NVIDIA H200"] * 2, "driver": ["580.159.04"],
            "torch": "2.11.0", "cuda": "13.0", "nccl": "2.28.9", "deepep_commit": "567632dd", "date_utc": "2026-12-05"}
    work = {"routing": "CAPTURE_DIR/routing_t64_bal.npz", "ep": 2, "experts": 16, "hidden": 7168,
            "dispatch_dtype": "bf16", "combine_dtype": "bf16"}
    rows = [{"id": f"v1n-{c}", "phase": "dispatch", "metric": "call_us", "measured": 50.0, "hardware": "h200-nvlink",
             "workload": work, "knobs": {"num_sms": 24, "dispatch_nvl_send_chunk": 4, "cached": c == "cached"},
             "sweeps": {"chunk_size": "g"}} for c in ("full", "cached")]
    capture_common.write_rows(tmp_path / "validation_rows.toml", "h200_deepep_v1_normal_ep2", prov, "a recipe", rows)
    text = (tmp_path / "validation_rows.toml").read_text().replace("CAPTURE_DIR", str(tmp_path))
    parsed = rows_from_doc(tomllib.loads(text), "validation_rows.toml")
    assert [r.id for r in parsed] == ["v1n-full", "v1n-cached"]
    assert "PyTorch 2.11.0, CUDA 13.0, NCCL 2.28.9, DeepEP 567632dd" in parsed[0].provenance["software"]
    res = evaluate(parsed, capture_routing)
    full, cached = res["predicted"].to_list()
    assert 0 < cached < full  # a cached handle skips notify and the CPU wait
    assert replay_command(parsed[1]).startswith(f"tracekit import routing {tmp_path}/routing_t64_bal.npz --ep 2")
    assert "--cached" in replay_command(parsed[1]) and "--dispatch-nvl-chunk 4" in replay_command(parsed[1])


def test_median_and_routing_dump_shape(capture_common, tmp_path):
    assert capture_common.median([3.0, 1.0, 2.0]) == 2.0 and capture_common.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    _dump(tmp_path / "r.npz", ranks=4, tokens=8)
    routing = capture_routing({"routing": str(tmp_path / "r.npz"), "ep": 4, "experts": 16, "hidden": 7168}, 8)
    assert routing.meta.ep_size == 4 and routing.num_rows == 32


def test_capture_scripts_parse_and_show_their_usage():
    import shutil
    import subprocess
    import sys

    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(TOOLS / "capture_runs.sh")]).returncode == 0
    for script, words in (("capture_deepep.py", "{build,run}"), ("capture_nccl_moe.py", "--world-size")):
        out = subprocess.run([sys.executable, str(TOOLS / script), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and words in out.stdout, out.stderr

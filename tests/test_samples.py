import importlib.util
import shlex
from pathlib import Path

import pytest

from tracekit.cli import main
from tracekit.io.validate import validate_file
from same_bytes import assert_same_bytes

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_traces"


def _make_samples():
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES_DIR / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_samples_are_exactly_the_listed_ones():
    names = sorted(_make_samples().SAMPLES)
    assert sorted(p.name for p in SAMPLES_DIR.glob("*.parquet")) == names
    for name in names:
        assert (SAMPLES_DIR / name).stat().st_size < 1_000_000
        assert validate_file(SAMPLES_DIR / name).schema == "routing.v1"


def test_regenerating_gives_identical_bytes(tmp_path, capsys):
    _make_samples().main(tmp_path)
    for path in sorted(SAMPLES_DIR.glob("*.parquet")):
        assert_same_bytes(tmp_path / path.name, path, path.name)


def _readme_commands():
    text = (SAMPLES_DIR / "README.md").read_text()
    return [line.strip() for line in text.splitlines() if line.strip().startswith("tracekit synth ")]


@pytest.mark.parametrize("command", _readme_commands())
def test_readme_commands_reproduce_the_files(tmp_path, capsys, command):
    argv = shlex.split(command)[1:]
    i = argv.index("-o")
    target = SAMPLES_DIR / Path(argv[i + 1]).name
    argv[i + 1] = str(tmp_path / target.name)
    assert main(argv + ["--quiet"]) == 0
    assert_same_bytes(tmp_path / target.name, target, target.name)


def test_readme_lists_every_sample():
    assert len(_readme_commands()) == len(_make_samples().SAMPLES)

"""The public API: exports held by __all__, runnable examples, README's example, the typed summary
(round trips, schema file equal to the dataclasses, tolerance of added keys)."""

from __future__ import annotations

import copy
import doctest
import json
import re
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracekit
from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.summary_types import SCHEMA_ID, Summary, flat_figures, schema_skeleton

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# exports


def test_all_is_exactly_the_public_top_level():
    public = {n for n in dir(tracekit) if not n.startswith("_") and not isinstance(getattr(tracekit, n), types.ModuleType)}
    assert public == set(tracekit.__all__) - {"__version__"}
    for name in tracekit.__all__:
        assert getattr(tracekit, name) is not None, name
    assert len(tracekit.__all__) == len(set(tracekit.__all__))


def test_replay_name_is_the_function_and_the_module_still_imports():
    from tracekit.replay import ReplayResult, summarise  # the internal paths other code uses

    assert callable(tracekit.replay) and not isinstance(tracekit.replay, types.ModuleType)
    assert ReplayResult is tracekit.ReplayResult and callable(summarise)


@pytest.mark.parametrize("name", [n for n in tracekit.__all__ if n != "__version__"])
def test_every_export_has_a_runnable_example(name):
    obj = getattr(tracekit, name)
    module = sys.modules[obj.__module__]
    tests = [t for t in doctest.DocTestFinder(recurse=False).find(obj, name, module=module) if t.examples]
    assert tests, f"{name} has no >>> example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, name


def test_package_docstring_examples_run():
    import tracekit.sweep
    import tracekit.summary_types

    for module in (tracekit, tracekit.sweep, tracekit.summary_types):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_readme_python_api_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md:Python API", "exec"), {"__name__": "readme"})
    assert "dispatch" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# typed summary


@pytest.fixture(scope="module")
def real_summary():
    routing = tracekit.synth("prefill", ep=16, tokens=64, layers=2)
    return tracekit.replay(routing, "h800-ib", tracekit.ReplayConfig(expert_gemm=True)).summary


def test_replay_summary_is_typed_and_reads_like_the_old_dict(real_summary):
    s = real_summary
    assert isinstance(s, Summary) and s.schema == SCHEMA_ID and s.schema_version == 1
    assert s.dispatch.latency_ns == s["dispatch"]["latency_ns"] and isinstance(s.dispatch.latency_ns, int)
    assert s.expert_gemm is not None and s.get("expert_gemm")["expert_ffn"] == s.expert_gemm.expert_ffn
    assert s.dispatch.latency_ns_per_call is not None and s.dispatch.latency_ns_per_call.calls == 2 and s.workload.steps_layers == 2
    assert "fabric" not in s and set(s) == set(s.to_dict())


def test_summary_items_can_be_set_like_the_old_dict():
    s = Summary.example()
    s["fabric"] = {"ecmp_collisions": 2}
    s["total_ns"] = 5
    assert s.extras["fabric"] == {"ecmp_collisions": 2} and s.total_ns == 5 and s["fabric"]["ecmp_collisions"] == 2
    with pytest.raises(TracekitError, match="summary.total_ns: expected an integer"):
        s["total_ns"] = "soon"


def test_summary_json_round_trip(real_summary, tmp_path):
    from tracekit.io.replay_out import read_summary, summary_json

    (tmp_path / "summary.json").write_text(summary_json(real_summary))
    back = read_summary(tmp_path / "summary.json")
    assert back == real_summary
    assert back.to_json() == real_summary.to_json()


def test_schema_file_equals_the_dataclasses():
    doc = schemas.json_schema(SCHEMA_ID)

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("description", "title")}
        return x

    assert strip(doc) == schema_skeleton(), (
        "schemas/summary.v1.json differs from tracekit/summary_types.py: add the new field (with a description) "
        "to the schema file")

    def described(node, path):
        for key, prop in node.get("properties", {}).items():
            assert prop.get("description"), f"{path}.{key} has no description"

    described(doc, "summary")
    for name, d in doc["$defs"].items():
        assert d.get("description"), name
        described(d, name)


def test_real_summary_validates_against_the_schema_file(real_summary):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(real_summary.to_json()), schemas.json_schema(SCHEMA_ID))
    bad = real_summary.to_dict()
    bad["dispatch"]["latency_ns"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas.json_schema(SCHEMA_ID))


def test_added_keys_survive_at_every_level(real_summary):
    """Other features add figures by writing keys: they must round-trip without a code change here."""
    doc = real_summary.to_dict()
    doc["fabric"] = {"ecmp_collisions": 3}
    doc["dispatch"]["overlap_ns"] = 120
    doc["workload"]["schedule"] = "ping-pong"
    doc["scale"]["switch_ports"] = 64
    doc["combine"]["bottleneck"]["confidence"] = 0.5
    doc["combine"]["rank_finish_ns"]["p90"] = 7
    s = Summary.from_dict(copy.deepcopy(doc))
    assert s.to_dict() == doc
    assert s.extras["fabric"] == {"ecmp_collisions": 3} and s.dispatch.extras == {"overlap_ns": 120}
    assert flat_figures(s)["dispatch.overlap_ns"] == 120 and flat_figures(s)["fabric.ecmp_collisions"] == 3


@pytest.mark.parametrize("path, value, message", [
    (("dispatch", "latency_ns"), "fast", "summary.dispatch.latency_ns: expected an integer, got a string"),
    (("dispatch", "latency_ns"), True, "summary.dispatch.latency_ns: expected an integer, got a boolean"),
    (("workload",), [], "summary.workload: expected a JSON object, got a list"),
    (("schema",), "summary.v9", "summary schema 'summary.v9' version 1 is not supported"),
])
def test_bad_summaries_name_the_key(real_summary, path, value, message):
    doc = real_summary.to_dict()
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(TracekitError, match=re.escape(message)):
        Summary.from_dict(doc)


def test_missing_key_is_named(real_summary):
    doc = real_summary.to_dict()
    del doc["combine"]["bound_ns"]
    with pytest.raises(TracekitError, match=r"summary.combine: missing key 'bound_ns'"):
        Summary.from_dict(doc)


_json_scalars = st.one_of(st.integers(-2**53, 2**53), st.floats(allow_nan=False, allow_infinity=False),
                          st.text(max_size=8), st.booleans())
_extras = st.dictionaries(st.text(min_size=1, max_size=6).map(lambda k: "x_" + k), _json_scalars, max_size=3)


def _instance(schema: dict, defs: dict) -> st.SearchStrategy:
    """Documents valid under a node of the skeleton schema (optional keys drawn present or absent)."""
    if "$ref" in schema:
        return _instance(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        required = {k: _instance(v, defs) for k, v in schema["properties"].items() if k in schema["required"]}
        optional = {k: _instance(v, defs) for k, v in schema["properties"].items() if k not in schema["required"]}
        base = st.fixed_dictionaries(required, optional=optional)
        if schema["additionalProperties"]:
            return st.tuples(base, _extras).map(lambda t: {**t[1], **t[0]})
        return base
    if kind == "object":
        item = schema["additionalProperties"]
        values = _json_scalars if item is True else _instance(item, defs)
        return st.dictionaries(st.text(max_size=6), values, max_size=4)
    return {"integer": st.integers(-2**53, 2**53), "number": st.floats(allow_nan=False, allow_infinity=False),
            "string": st.text(max_size=10), "boolean": st.booleans()}[kind]


_SKELETON = schema_skeleton()


@settings(max_examples=60, deadline=None)
@given(_instance(_SKELETON, _SKELETON["$defs"]))
def test_any_valid_document_round_trips(doc):
    s = Summary.from_dict(doc)
    assert s.to_dict() == doc
    assert Summary.from_json(s.to_json()).to_dict() == json.loads(s.to_json())

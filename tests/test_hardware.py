import pytest

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.hardware import list_profiles, load_profile
from tracekit.hardware.profile import parse_profile


def test_required_profiles_ship():
    assert {"h800-ib", "h200-nvlink", "ascend910b-roce", "generic"} <= set(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_every_field_has_value_and_source(name):
    p = load_profile(name)
    fields = [f for f in schemas.load("hardware").fields if f.required or f.section in p.values]
    for f in fields:  # optional sections ([fabric]) are complete when present
        assert p.sources[f.section][f.name].strip(), (name, f.section, f.name)
    t = p.table()
    assert t.height == len(fields)


def test_h800_datasheet_figures():
    p = load_profile("h800-ib")
    assert p.gpu.sms == 132 and p.nic.line_rate_gbit_s == 400 and p.nvlink.bandwidth_gbyte_s == 160
    assert load_profile("h200-nvlink").nvlink.links == 18


def test_overrides_convert_and_record_source():
    p = load_profile("generic").with_overrides({"nic.line_rate_gbit_s": "400"})
    assert p.nic.line_rate_gbit_s == 400.0 and p.sources["nic"]["line_rate_gbit_s"].startswith("override")


@pytest.mark.parametrize("override,match", [
    ({"nic.bogus": 1}, "unknown hardware field nic.bogus"),
    ({"nic.line_rate_gbit_s": "fast"}, "is not a finite number"),
    ({"nic.line_rate_gbit_s": float("inf")}, "is not a finite number"),
    ({"nic.line_rate_gbit_s": float("nan")}, "is not a finite number"),
    ({"nic.wqe_depth": float("inf")}, "is not a finite whole number"),
    ({"nic.wqe_depth": 0}, "must be positive"),
    ({"switch.topology": "torus"}, "not one of single, leaf_spine"),
])
def test_bad_overrides_are_one_line(override, match):
    with pytest.raises(TracekitError, match=match):
        load_profile("generic").with_overrides(override)


def test_unknown_profile_lists_choices():
    with pytest.raises(TracekitError, match="use one of .*h800-ib"):
        load_profile("h900")


def test_value_without_source_rejected():
    with pytest.raises(TracekitError, match="source"):
        parse_profile({"name": "x", "nic": {"mtu_bytes": {"value": 4096}}}, "x.toml")

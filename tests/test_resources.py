"""ResourcePath: the one parser of resource strings."""

import pytest

from tracekit.errors import TracekitError
from tracekit.resources import ResourcePath


def test_numbers_the_path_implies():
    p = ResourcePath.parse("node1/rank12/sm/ch4/a")
    assert (p.rank, p.number("ch"), p.number("qp"), p.number("node")) == (12, 4, -1, 1)
    assert p.implied() == {"rank": 12, "channel": 4, "qp": -1}
    assert ResourcePath.parse("node0/rank3/nic0/qp10").implied() == {"rank": 3, "channel": -1, "qp": 10}
    assert ResourcePath.parse("switch0/port2").implied() == {"rank": -1, "channel": -1, "qp": -1}
    # the first segment of a kind wins; a segment with more than the number does not count
    assert ResourcePath.parse("rank1/rank2/ch3x/ch").implied() == {"rank": 1, "channel": -1, "qp": -1}
    assert (p.top, p.rest) == ("node1", "rank12/sm/ch4/a")
    assert ResourcePath.parse("node0").rest == ""


@pytest.mark.parametrize("path, kind, unit", [
    ("node0/rank3/nic0/tx", "nic/tx", "nic_tx"),
    ("node0/rank3/nic0/qp5", "nic/qp", "nic_qp5"),
    ("node1/rank9/sm/ch2/a", "sm", "sm"),
    ("node0/rank1/nvlink/rx", "nvlink/rx", "nvlink_rx"),
    ("node0/rank1/nvlink/to3", "nvlink/to", "nvlink"),
    ("node0/rank1/pcie/rd", "pcie/rd", "pcie_rd"),
    ("node0/rank1/hbm", "hbm", "hbm"),
    ("node0/rank1/cpu/proxy", "cpu/proxy", "cpu_proxy"),
    ("switch0/port5", "switch/port", "switch_port"),
    ("leaf1/up3", "leaf/up", "switch_uplink"),
    ("spine0/port1", "spine/port", "spine_port"),
    ("node0/rank1/stream7", "stream", "stream7"),
])
def test_kinds(path, kind, unit):
    p = ResourcePath.parse(path)
    assert (p.kind(), p.unit_kind()) == (kind, unit)


@pytest.mark.parametrize("bad", ["", "node0//rank1", "/node0", "node0/", None])
def test_bad_paths_are_one_line_errors(bad):
    with pytest.raises(TracekitError, match="not a slash-separated path"):
        ResourcePath.parse(bad)

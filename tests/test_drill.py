"""Short runs of the fault drill, so that `make drill` never rots."""

from __future__ import annotations

import pytest

from tests.drill import drill


@pytest.mark.parametrize("topology", ["standalone", "sentinel", "cluster"])
def test_short_drill_loses_and_duplicates_nothing(topology: str) -> None:
    result = drill(duration_s=8, outage_s=2, writer_count=2, topology=topology)
    assert result["acknowledged"] > 100
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["corrupt"] == 0
    assert result["stored"] == result["acknowledged"]
    assert result["fresh_write_ok"]

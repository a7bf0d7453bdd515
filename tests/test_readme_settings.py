"""The README's table of server limits states the defaults ``ServerConfig`` really has."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from fedge.conf.schema import ServerConfig

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `server\.(\w+)` \| ([^|]+) \|", re.M)


def test_every_server_setting_in_the_readme_table_has_its_schema_default():
    rows = dict(ROW.findall(README.read_text()))
    defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
    assert len(rows) >= 11, "the README's server settings table is missing"
    for key, stated in rows.items():
        assert key in defaults, f"README names server.{key}, which ServerConfig does not have"
        assert math.isclose(float(stated), float(defaults[key])), (key, stated, defaults[key])

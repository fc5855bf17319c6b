"""[slapos] max_retention_delay: a number of days, 0 or more (default 90)."""
from __future__ import annotations

import pytest

from slapos.base.config import Config
from slapos.base.errors import ConfigError
from slapos.base.settings import NodeSettings

BASE = "[slapos]\ncomputer_id = C\nmaster_url = http://127.0.0.1:1/\nsoftware_root = /s\ninstance_root = /i\n"


def test_default_and_value():
    assert NodeSettings.from_config(Config(text=BASE)).max_retention_delay == 90.0
    assert NodeSettings.from_config(Config(text=BASE + "max_retention_delay = 2.5\n")).max_retention_delay == 2.5


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "soon"])
def test_bad_values_are_one_clear_error(value):
    with pytest.raises(ConfigError, match="max_retention_delay"):
        NodeSettings.from_config(Config(text=BASE + f"max_retention_delay = {value}\n"))

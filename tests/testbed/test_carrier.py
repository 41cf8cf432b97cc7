"""The carrier configs the test bed writes (testbed/carrier.py): the server's
key pinned, any setting overridable."""

from __future__ import annotations

from pathlib import Path

from testbed import openssh
from testbed.carrier import carrier_config

ENDPOINT = openssh.Endpoint(port=2222, identity=Path("/k/id"), known_hosts=Path("/k/known"))


def test_carrier_config_pins_the_key_and_takes_overrides_even_for_user() -> None:
    text = carrier_config(ENDPOINT, "u", user="other", known_hosts=None, rate_limit=5)
    assert text.splitlines() == [
        "host: 127.0.0.1",
        "port: 2222",
        "user: other",
        "identity_file: /k/id",
        "known_hosts: null",
        "connect_timeout: 10",
        "ssh_config: null",
        "rate_limit: 5",
    ]

"""The test bed's carrier-config writer (code in testbed/carrier.py)."""

from testbed.carrier import carrier_config, write_carrier_config

__all__ = ["carrier_config", "write_carrier_config"]

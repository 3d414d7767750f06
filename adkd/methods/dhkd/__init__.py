from adkd.methods.dhkd.module import DHKD
from adkd.methods.dhkd.network import DHKDNetwork

__all__ = ["DHKD", "DHKDNetwork"]

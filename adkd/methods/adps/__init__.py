from adkd.methods.adps.module import ADPS
from adkd.methods.adps.network import ADPSNetwork

__all__ = ["ADPS", "ADPSNetwork"]

from adkd.methods.stfpm.module import STFPM
from adkd.methods.stfpm.network import STFPMNetwork

__all__ = ["STFPM", "STFPMNetwork"]

from adkd.methods.draem.module import DRAEM
from adkd.methods.draem.network import DRAEMNetwork

__all__ = ["DRAEM", "DRAEMNetwork"]

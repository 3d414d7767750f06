from adkd.methods.destseg.module import DeSTSeg
from adkd.methods.destseg.network import DeSTSegNetwork

__all__ = ["DeSTSeg", "DeSTSegNetwork"]

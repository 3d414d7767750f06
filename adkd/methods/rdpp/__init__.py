from adkd.methods.rdpp.module import RDPP
from adkd.methods.rdpp.network import RDPPNetwork

__all__ = ["RDPP", "RDPPNetwork"]

from adkd.methods.uninet.module import UniNet
from adkd.methods.uninet.network import UniNetNetwork

__all__ = ["UniNet", "UniNetNetwork"]

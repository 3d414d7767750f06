from adkd.methods.rd4ad.module import RD4AD
from adkd.methods.rd4ad.network import RD4ADNetwork

__all__ = ["RD4AD", "RD4ADNetwork"]

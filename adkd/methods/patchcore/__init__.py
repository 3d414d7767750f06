from adkd.methods.patchcore.module import PatchCore
from adkd.methods.patchcore.network import PatchCoreNetwork

__all__ = ["PatchCore", "PatchCoreNetwork"]

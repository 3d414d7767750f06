from adkd.methods.efficientad.module import EfficientAD
from adkd.methods.efficientad.network import AutoEncoder, EfficientADNetwork, PatchDescriptionNetwork

__all__ = ["AutoEncoder", "EfficientAD", "EfficientADNetwork", "PatchDescriptionNetwork"]

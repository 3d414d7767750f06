from adkd.methods.efficientad.network import AutoEncoder, EfficientADNetwork, PatchDescriptionNetwork

__all__ = ["AutoEncoder", "EfficientADNetwork", "PatchDescriptionNetwork"]

"""Pretrained feature extractors picked by name from config."""

from adkd.backbones.extractor import FeatureExtractor, build_stages
from adkd.backbones.weights import BackboneWeightsError

__all__ = ["FeatureExtractor", "BackboneWeightsError", "build_stages"]

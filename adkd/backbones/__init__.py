"""Pretrained feature extractors picked by name from config."""

from adkd.backbones.extractor import FeatureExtractor, build_stages

__all__ = ["FeatureExtractor", "build_stages"]

"""``adkd serve <run>``: a local web app and HTTP endpoint for one trained run (see ``__main__``)."""

# Uploads: the largest image decoded (width x height). Inspection cameras give up to about 30
# megapixels (a 31.5 MP 6480x4860 area-scan sensor; line-scan frames are cut to a few thousand
# lines); 40 MP keeps them with room, and takes about 0.5 GB to decode and resize.
DEFAULT_MAX_PIXELS = 40_000_000

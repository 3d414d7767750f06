"""Parts methods share: feature-map distances (maps), the map's smoothing and image score
(postprocess), losses and weight initialisation."""

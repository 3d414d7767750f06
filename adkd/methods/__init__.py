"""Anomaly-detection methods: each a network (nn.Module) wrapped by a thin LightningModule."""

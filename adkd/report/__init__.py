"""Results tables (per category, like the papers') and anomaly-map figures."""

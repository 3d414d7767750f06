"""The names of the metrics every run reports (metrics.json's keys), apart from the code that computes
them: the report reads them without loading torch."""

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_aupro_005", "pixel_f1max")
THRESHOLD_METRICS = ("image_f1", "image_precision", "image_recall", "image_fpr")  # at the calibrated threshold
REGION_METRICS = (
    "pixel_spro",
    "pixel_spro_03",
    "pixel_spro_logical",
    "pixel_spro_structural",
    "pixel_spro_mean",
)  # AU-sPRO, where a dataset has defect regions (MVTec LOCO)
# Image AUROC on the normal images and one kind of anomaly, where a dataset names kinds (MVTec LOCO AD)
KIND_METRICS = {"logical_anomalies": "image_auroc_logical", "structural_anomalies": "image_auroc_structural"}
# The mean of the two kinds' image AUROC: MVTec LOCO AD's official detection number (its "mean")
KIND_MEAN = "image_auroc_mean"
# AU-sPRO (to FPR 0.05) on the normal images and one kind of anomaly, and the mean of the two kinds':
# MVTec LOCO AD's official localization numbers (its evaluation scores each kind with the good images)
KIND_SPRO_METRICS = {"logical_anomalies": "pixel_spro_logical", "structural_anomalies": "pixel_spro_structural"}
SPRO_MEAN = "pixel_spro_mean"
# A part seen from several views, scored by its highest-scoring view (Real-IAD multi-view, adkd.metrics.samples)
SAMPLE_METRICS = ("sample_auroc", "sample_ap", "sample_f1max")
SEGMENTATION_METRICS = ("pixel_seg_f1",)  # at the segmentation threshold (see AnomalyMetrics.segmentation_f1)
METRIC_NAMES = (*IMAGE_METRICS, *PIXEL_METRICS)

"""CUDA checks (run on a machine with a GPU; skipped elsewhere): every method trains under AMP
with finite losses, DHKD's flow stays in float32 under AMP, and ADPS's training step on the
device does not go back to the host once per sample."""

from __future__ import annotations

import csv
import json
import math
import warnings

import pytest
import torch

from adkd.methods.registry import method_names
from adkd.training.config import compose
from tests.conftest import smallest_image, tiny_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("method", method_names())
def test_each_method_trains_under_amp_with_finite_losses(method, precision, tiny_mvtec, tmp_path):
    from adkd.training.run import run

    overrides = tiny_overrides(
        tiny_mvtec,
        f"method={method}",
        "trainer=gpu",
        f"trainer.precision={precision}",
        "logger=csv",
        "max_epochs=2",
        "dataset.num_workers=0",
        f"image_size={smallest_image(method)}",
    )
    cfg = compose(overrides, tmp_path)
    run(cfg)
    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    if cfg.method.get("optimizer") is not None:  # a method that optimises logs a loss per epoch
        assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert all(math.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dhkd_flow_runs_in_float32_under_amp(dtype):
    from adkd.methods.dhkd import DHKD, DHKDNetwork

    model = DHKD(DHKDNetwork("resnet18", pretrained=False, image_size=64)).cuda()
    seen = {}
    flow = model.network.teacher.flows[0]
    flow.register_forward_hook(lambda m, inputs, output: seen.update(z=output[0].dtype))
    with torch.autocast("cuda", dtype=dtype):
        out = model.network(torch.rand(2, 3, 64, 64, device="cuda"), noise_sigma=0.5)
    assert seen["z"] == torch.float32
    assert out["nll"].dtype == torch.float32 and torch.isfinite(out["nll"])
    assert out["student"][0].dtype == dtype  # the student does run in half precision


def _syncs_in_adps_loss(tiny_mvtec, tmp_path, synthesis_in_loader: bool) -> int:
    """Host synchronisations in one ADPS loss on the GPU for a batch of 8 from the datamodule:
    its synthetic anomalies made in the loader, or (the fallback for foreign loaders) on the device."""
    from hydra.utils import instantiate

    cfg = compose(tiny_overrides(tiny_mvtec, "method=adps", "batch_size=8"), tmp_path)
    datamodule = instantiate(cfg.dataset, synthesis=cfg.synthesis if synthesis_in_loader else None)
    model = instantiate(cfg.method, _convert_="all").cuda()
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    assert len(batch["image"]) == 8
    model.loss(batch)  # warm-up (cuDNN and kernel selection may sync)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model.loss(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_adps_training_step_does_not_sync_per_sample(tiny_mvtec, tmp_path):
    assert _syncs_in_adps_loss(tiny_mvtec, tmp_path / "a", synthesis_in_loader=True) <= 2
    # what the check guards against: anomalib's generator on device tensors syncs per sample
    assert _syncs_in_adps_loss(tiny_mvtec, tmp_path / "b", synthesis_in_loader=False) >= 8

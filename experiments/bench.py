"""Inference speed of every method side by side, in one process (ratios are what to compare).

Each model turns a batch of [0, 1] images into smoothed anomaly maps and image scores. On a
CUDA machine the default is the papers' setting (WRN-50-2, 256 px) at batch 1 (latency) and
batch 32 (throughput), in fp32 and under AMP, with anomalib's ReverseDistillation and Stfpm
measured in the same rounds. On the CPU: MobileNetV2, batch 8, fp32.

python experiments/bench.py [--backbone B] [--image-size 256] [--batches 1 32] [--precisions fp32 amp]
                            [--rounds 7] [--device cpu|cuda] [--anomalib | --no-anomalib] [--onnx | --no-onnx]

On the CPU each method is also exported to ONNX and timed under ONNX Runtime (--onnx).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adkd.export import write_onnx
from adkd.inference import Deployable, OnnxModel, for_export
from adkd.methods.registry import build_method, method_names

BASELINE = "rd4ad"


def anomalib_models(backbone: str, image_size: int) -> dict:
    """anomalib's ReverseDistillation and Stfpm networks (random weights: speed only)."""
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
    from anomalib.models.image.stfpm import torch_model as stfpm

    layers = ["layer1", "layer2", "layer3"]
    rd = ReverseDistillationModel(backbone, (image_size, image_size), layers, AnomalyMapGenerationMode.ADD, False)
    # STFPMModel always asks timm for pretrained teacher weights (a download); speed needs none.
    original = stfpm.TimmFeatureExtractor
    stfpm.TimmFeatureExtractor = lambda *a, **kw: original(*a, **{**kw, "pre_trained": False})
    try:
        st = stfpm.STFPMModel(layers, backbone)
    finally:
        stfpm.TimmFeatureExtractor = original
    return {"anomalib-rd": rd, "anomalib-stfpm": st}


def predictor(model):  # noqa: ANN001, ANN201
    """images -> outputs, for an adkd module (its Deployable: what predict and export run), an
    exported model under ONNX Runtime, or an anomalib torch model."""
    if isinstance(model, OnnxModel):
        return model
    if hasattr(model, "predict_maps"):
        return torch.no_grad()(Deployable(model))
    # anomalib's models take ImageNet-normalised images (its pre-processor does that first).
    mean = torch.tensor((0.485, 0.456, 0.406), device=next(model.parameters()).device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=mean.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def run(images):  # noqa: ANN001, ANN202
        out = model((images - mean) / std)
        return out.anomaly_map, out.pred_score

    return run


def time_once(fn, images: torch.Tensor, amp: bool) -> float:  # noqa: ANN001
    autocast = torch.autocast(images.device.type, dtype=torch.float16) if amp else contextlib.nullcontext()
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast:
        fn(images)
    if images.is_cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / images.shape[0]


def interleaved_medians(models: dict, images: torch.Tensor, rounds: int, amp: bool = False) -> dict[str, float]:
    """Median ms/image per model, the models taking turns each round, so that a slow spell of a
    noisy machine hits all of them alike."""
    fns = {name: predictor(model) for name, model in models.items()}
    for fn in fns.values():
        for _ in range(2):  # warm-up: cuDNN autotuning, allocator, lazy init
            time_once(fn, images, amp)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_once(fn, images, amp))
    return {name: statistics.median(t) for name, t in times.items()}


def build(args: argparse.Namespace) -> dict:
    """Every registered method (random weights: speed only) as its yaml builds it."""
    models = {}
    examples = torch.rand(8, 3, args.image_size, args.image_size)
    for name in method_names():
        model = build_method(name, f"backbone={args.backbone}", "backbone.pretrained=false",
                             f"image_size={args.image_size}")  # fmt: skip
        model.fit_example(examples)  # PatchCore: a memory bank of these images' patches
        models[name] = model.to(args.device).prepare_for_inference()
    if args.onnx:
        folder = Path(tempfile.mkdtemp(prefix="adkd-bench-"))
        for name in method_names():
            path = folder / f"{name}.onnx"
            deployable = for_export(copy.deepcopy(Deployable(models[name].to(memory_format=torch.contiguous_format))))
            example = torch.rand(2, 3, args.image_size, args.image_size, device=args.device)
            write_onnx(deployable, example, path, {"image_size": str(args.image_size)})
            models[name].to(memory_format=torch.channels_last)
            models[f"{name} onnxruntime"] = OnnxModel(path, args.device)
    if args.anomalib:
        for name, model in anomalib_models(args.backbone, args.image_size).items():
            models[name] = model.to(args.device).eval().to(memory_format=torch.channels_last)
    return models


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2" if cuda else "mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32] if cuda else [8])
    precisions = ["fp32", "amp"] if cuda else ["fp32"]
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "amp"], default=precisions)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--anomalib", action=argparse.BooleanOptionalAction, default=cuda,
                        help="also time anomalib's ReverseDistillation and Stfpm (ResNet backbones)")  # fmt: skip
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=not cuda,
                        help="also time each method exported to ONNX, under ONNX Runtime")  # fmt: skip
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    models = build(args)
    cpu = f"cpu, {torch.get_num_threads()} threads"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"{args.backbone}, {args.image_size} px, {device}; ms/image, median of {args.rounds} interleaved rounds")
    header = f"{'method':<24}" + "".join(f"{f'b{b} {p}':>16}" for b in args.batches for p in args.precisions)
    rows = {name: "" for name in models}
    times = {name: [] for name in models}
    for batch in args.batches:
        images = torch.rand(batch, 3, args.image_size, args.image_size, device=args.device)
        images = images.contiguous(memory_format=torch.channels_last)
        for precision in args.precisions:
            ms = interleaved_medians(models, images, args.rounds, amp=precision == "amp")
            for name, value in ms.items():
                rows[name] += f"{value:8.2f} x{value / ms[BASELINE]:5.2f} "
                times[name].append(value)
    print(header)
    for name, row in rows.items():
        print(f"{name:<24}{row}")
    print(f"(x: ratio to adkd's {BASELINE} in the same column)")
    if args.onnx:
        print("ONNX Runtime / torch eager, per method and column:")
        for name in method_names():
            ratios = [ort / eager for ort, eager in zip(times[f"{name} onnxruntime"], times[name], strict=True)]
            print(f"  {name:<10}" + "".join(f"{r:16.2f}" for r in ratios))


if __name__ == "__main__":
    main()

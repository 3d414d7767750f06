"""Inference speed of every method side by side, in one process (ratios are what to compare).

Each model turns a batch of [0, 1] images into smoothed anomaly maps and image scores. On a
CUDA machine the default is the papers' setting (WRN-50-2, 256 px) at batch 1 (latency) and
batch 32 (throughput), in fp32 and under AMP, with anomalib's ReverseDistillation and Stfpm (and,
from 256 px, EfficientAd-S beside adkd's EfficientAD-S) measured in the same rounds. On the CPU:
ResNet-18, batch 8, fp32, every method also exported to ONNX and timed under ONNX Runtime (--onnx)
and OpenVINO in fp32 and int8 (--openvino), with anomalib's ReverseDistillation and Stfpm in torch
and through anomalib's own OpenVINO export (at OpenVINO's default precision, which is bf16 on CPUs
that have it, and in f32).

python experiments/bench.py [--backbone B] [--image-size 256] [--batches 1 32] [--precisions fp32 amp]
                            [--rounds 7] [--device cpu|cuda] [--anomalib | --no-anomalib] [--onnx | --no-onnx]
                            [--openvino | --no-openvino]
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

from adkd.deploy.engines import Deployable, OnnxModel, OpenVinoModel, for_export
from adkd.deploy.export import write_onnx
from adkd.methods.registry import build_method, method_names

BASELINE = "rd4ad"


def anomalib_models(backbone: str, image_size: int) -> dict:
    """anomalib's ReverseDistillation and Stfpm networks, and from 256 px its EfficientAd-S (which
    needs them; no backbone: its own PDN), all with random weights: speed only."""
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel
    from anomalib.models.image.stfpm import torch_model as stfpm

    layers = ["layer1", "layer2", "layer3"]
    rd = ReverseDistillationModel(backbone, (image_size, image_size), layers, AnomalyMapGenerationMode.ADD, False)
    with stfpm_without_download():
        st = stfpm.STFPMModel(layers, backbone)
    models = {"anomalib-rd": rd, "anomalib-stfpm": st}
    if image_size >= 256:
        efficientad = EfficientAdModel(teacher_out_channels=384, model_size="small", padding=False, pad_maps=True)
        efficientad.takes_unit_images = True  # it normalises inside, as adkd's networks do
        models["anomalib-efficientad-s"] = efficientad
    return models


@contextlib.contextmanager
def stfpm_without_download():  # noqa: ANN201
    """anomalib's STFPMModel always asks timm for pretrained teacher weights (a download); speed needs none."""
    from anomalib.models.image.stfpm import torch_model as stfpm

    original = stfpm.TimmFeatureExtractor
    stfpm.TimmFeatureExtractor = lambda *a, **kw: original(*a, **{**kw, "pre_trained": False})
    try:
        yield
    finally:
        stfpm.TimmFeatureExtractor = original


class AnomalibOpenVino:
    """anomalib's own OpenVINO export (``to_openvino``: its pre- and post-processing inside) of one
    of its models, compiled as its OpenVINOInferencer compiles it (``hint=None``: OpenVINO's CPU
    defaults, bf16 where the CPU has it) or in f32, with as many threads as adkd's engines."""

    def __init__(self, model, image_size: int, folder: Path, hint: str | None) -> None:  # noqa: ANN001
        import openvino as ov

        core = ov.Core()
        xml = folder / type(model).__name__ / "weights" / "openvino" / "model.xml"
        if not xml.is_file():
            model.to_openvino(folder / type(model).__name__, input_size=(image_size, image_size))
        settings = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}
        if hint:
            settings["INFERENCE_PRECISION_HINT"] = hint
        self.compiled = core.compile_model(str(xml), "CPU", settings)
        self.hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def __call__(self, images: torch.Tensor):  # noqa: ANN204
        results = self.compiled(images.contiguous().numpy())
        return results[0], results[1]


def anomalib_openvino(backbone: str, image_size: int, folder: Path) -> dict:
    """anomalib's ReverseDistillation and Stfpm (random weights) through anomalib's OpenVINO export,
    at its default precision and in f32."""
    from anomalib.models import ReverseDistillation, Stfpm

    models = {}
    with stfpm_without_download():
        stfpm = Stfpm(backbone=backbone)
    for short, model in (("rd", ReverseDistillation(backbone=backbone, pre_trained=False)), ("stfpm", stfpm)):
        for hint in (None, "f32"):
            engine = AnomalibOpenVino(model, image_size, folder, hint)
            models[f"anomalib-{short} openvino {engine.hint}" + (" (default)" if hint is None else "")] = engine
    return models


def predictor(model):  # noqa: ANN001, ANN201
    """images -> outputs, for an adkd module (its Deployable: what predict and export run), an
    exported model under ONNX Runtime or OpenVINO, or an anomalib torch model."""
    if isinstance(model, OnnxModel | OpenVinoModel | AnomalibOpenVino):
        return model
    if hasattr(model, "predict_maps"):
        return torch.no_grad()(Deployable(model))
    # anomalib's models take ImageNet-normalised images (its pre-processor does that first), but
    # EfficientAd, which normalises inside.
    mean = torch.tensor((0.485, 0.456, 0.406), device=next(model.parameters()).device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device=mean.device).view(1, 3, 1, 1)
    if getattr(model, "takes_unit_images", False):
        mean, std = torch.zeros_like(mean), torch.ones_like(std)

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


def build(args: argparse.Namespace, folder: Path) -> dict:
    """Every registered method (random weights: speed only) as its yaml builds it; exported graphs go to `folder`."""
    models = {}
    examples = torch.rand(8, 3, args.image_size, args.image_size)
    for name in args.methods:
        model = build_method(
            name, f"backbone={args.backbone}", "backbone.pretrained=false", f"image_size={args.image_size}"
        )
        model.fit_example(examples)  # PatchCore: a memory bank of these images' patches
        model = model.to(args.device).prepare_for_inference()
        with torch.no_grad():  # thresholds, as a finished run has (exported graphs hold them)
            anomaly_map, score = model.predict_maps(examples.to(args.device))
        model.post.calibrate(score.cpu(), anomaly_map.cpu(), 0.01)
        models[name] = model
    if args.onnx:
        for name in args.methods:
            path = folder / f"{name}.onnx"
            deployable = for_export(copy.deepcopy(Deployable(models[name].to(memory_format=torch.contiguous_format))))
            example = torch.rand(2, 3, args.image_size, args.image_size, device=args.device)
            write_onnx(deployable, example, path, {"image_size": str(args.image_size)})
            models[name].to(memory_format=torch.channels_last)
            models[f"{name} onnxruntime"] = OnnxModel(path, args.device)
            if args.openvino:
                models.update(openvino_engines(name, path, args.image_size, folder))
    if args.anomalib:
        for name, model in anomalib_models(args.backbone, args.image_size).items():
            models[name] = model.to(args.device).eval().to(memory_format=torch.channels_last)
        if args.openvino:
            models.update(anomalib_openvino(args.backbone, args.image_size, folder))
    return models


def openvino_engines(name: str, onnx: Path, image_size: int, folder: Path) -> dict:
    """A method's ONNX export as OpenVINO fp32 and int8 (calibrated on 16 random images: the
    speed of int8 does not depend on what it was calibrated on; its accuracy is export's check)."""
    import openvino as ov

    from adkd.deploy.openvino import quantize, save_ir

    engines = {}
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.rand(3, image_size, image_size, generator=generator) for _ in range(16)]
    for precision in ("fp32", "int8"):
        network = ov.convert_model(str(onnx))
        if precision == "int8":
            network = quantize(network, calibration)
        path = folder / f"{name}_{precision}.xml"
        save_ir(network, path, {"image_size": str(image_size)}, precision)
        engines[f"{name} openvino {precision}"] = OpenVinoModel(path)
    return engines


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2" if cuda else "resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32] if cuda else [8])
    precisions = ["fp32", "amp"] if cuda else ["fp32"]
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "amp"], default=precisions)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--anomalib",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time anomalib's ReverseDistillation and Stfpm (ResNet backbones)",
    )
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=not cuda,
        help="also time each method exported to ONNX, under ONNX Runtime",
    )
    parser.add_argument(
        "--openvino",
        action=argparse.BooleanOptionalAction,
        default=not cuda,
        help="also time each ONNX export under OpenVINO (fp32, int8), and anomalib's own OpenVINO "
        "exports beside them (with --anomalib)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=method_names(),
        default=method_names(),
        help=f"which methods (default: all; {BASELINE}, the ratios' baseline, always)",
    )
    args = parser.parse_args()
    args.methods = list(dict.fromkeys([BASELINE, *args.methods]))
    args.openvino = args.openvino and args.device == "cpu" and args.onnx
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="adkd-bench-") as folder:  # the exported graphs (~250 MB), removed after
        report(args, build(args, Path(folder)))


def report(args: argparse.Namespace, models: dict) -> None:
    """Every engine timed in interleaved rounds, printed with its ratio to the baseline."""
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
        for name in args.methods:
            ratios = [ort / eager for ort, eager in zip(times[f"{name} onnxruntime"], times[name], strict=True)]
            print(f"  {name:<10}" + "".join(f"{r:16.2f}" for r in ratios))
    if args.openvino:
        print("OpenVINO int8 / OpenVINO fp32, per method and column (target: at most 0.6):")
        for name in args.methods:
            int8, fp32 = times[f"{name} openvino int8"], times[f"{name} openvino fp32"]
            ratios = [a / b for a, b in zip(int8, fp32, strict=True)]
            print(f"  {name:<10}" + "".join(f"{r:16.2f}" for r in ratios))
    anomalib_ov = [n for n in times if n.startswith("anomalib-") and "openvino" in n]
    if anomalib_ov:
        print("adkd's fastest engine / anomalib's OpenVINO export, same architecture (target: at most 0.5):")
        for ours, theirs in (("rd4ad", "anomalib-rd"), ("stfpm", "anomalib-stfpm")):
            engines = [n for n in times if n == ours or n.startswith(f"{ours} ")]
            for column in range(len(times[ours])):
                best = min(engines, key=lambda n: times[n][column])
                for their in (n for n in anomalib_ov if n.startswith(f"{theirs} ")):
                    ratio = times[best][column] / times[their][column]
                    print(f"  {best} / {their}: {ratio:.2f}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # timings are all or nothing: nothing to resume
        raise SystemExit(
            "\nInterrupted: the bench keeps no partial timings; its exported graphs were removed."
        ) from None

"""How much of each class survives the VAE? For every run's VAE: the real validation images
and their reconstructions, each classified by the same real-trained judges (the run's
baseline and its `baseline_seeds` members). A UNet paints in the VAE's latent space, so the
recall on reconstructions is the ceiling of the generator's class fidelity.

    python benchmarks/vae_class_probe.py runs/generator-budget runs/vae-latent8 \\
        --out benchmarks/results/vae_capacity_probe.json

The judges come from the first run; every run must hold the same prepared data. The summary
(`independent_mean`) averages the baseline_seeds judges only: a VAE trained with
`vae.perceptual_weight` learnt in baseline/model's features.

`--blur 0.5 1 1.5` also scores the originals under a Gaussian blur of each sigma (pixels), with
their PSNR: whether a VAE loses a class the way any blur of the same PSNR would, or otherwise.
`chroma` (per class, every image set) is the mean per-pixel spread of R, G and B.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchvision.transforms.v2.functional import gaussian_blur

from dermae.classify.model import load_classifier
from dermae.data.prepared import load_prepared
from dermae.synth.quality import reconstructed_images
from dermae.synth.vae import load_vae


def judge_names(run: Path) -> list[Path]:
    """The baseline and every baseline_seeds member of `run`."""
    members = sorted((run / "baseline_seeds").glob("*/model/config.json"))
    return [run / "baseline" / "model"] + [m.parent for m in members]


def recall_per_class(
    judge: torch.nn.Module, images: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """Fraction of each class's uint8 [N, H, W, 3] images the judge assigns to that class."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        pred = torch.cat([judge(x[s : s + 256]).argmax(1) for s in range(0, len(x), 256)])
    pred = pred.numpy()
    return {c: round(float((pred[labels == i] == i).mean()), 4) for i, c in enumerate(classes)}


def chroma_per_class(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Mean per-pixel spread of R, G and B (max - min) per class: how much colour survives."""
    spread = images.max(-1).astype(np.float32) - images.min(-1).astype(np.float32)
    return {c: round(float(spread[labels == i].mean()), 1) for i, c in enumerate(classes)}


def psnr_db(original: np.ndarray, changed: np.ndarray) -> float:
    """PSNR over the whole uint8 set, as torchmetrics gives the VAE's metrics.json."""
    a, b = (torch.from_numpy(np.ascontiguousarray(x)).float() for x in (original, changed))
    return float(peak_signal_noise_ratio(b, a, data_range=255.0))


def blurred_entry(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    judges: dict[str, torch.nn.Module],
    sigma: float,
) -> dict:
    """The judges' recall per class on `images` under a Gaussian blur of `sigma` pixels."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    kernel = 2 * int(np.ceil(3 * sigma)) + 1
    blurred = gaussian_blur(x, [kernel, kernel], [sigma, sigma]).permute(0, 2, 3, 1).numpy()
    return {
        "metrics": {"psnr": round(psnr_db(images, blurred), 2)},
        "chroma": chroma_per_class(blurred, labels, classes),
        "reconstructed": {
            name: recall_per_class(j, blurred, labels, classes) for name, j in judges.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--blur", type=float, nargs="*", default=[], metavar="SIGMA")
    args = parser.parse_args()

    data = load_prepared(args.runs[0], with_synthetic=False)
    rows = data.rows("val")
    images = np.asarray(data.arrays["real"][rows["cache_index"].to_numpy()])
    labels = rows["label"].to_numpy()
    classes = data.class_names
    judges = {
        str(p.relative_to(args.runs[0])): load_classifier(p)[0] for p in judge_names(args.runs[0])
    }
    device = torch.device("cpu")
    result: dict = {
        "what": "judge recall per class on real val images and on their VAE reconstructions",
        "judges": list(judges),
        "val_images": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "real": {name: recall_per_class(j, images, labels, classes) for name, j in judges.items()},
        "real_chroma": chroma_per_class(images, labels, classes),
        "vaes": {},
    }
    if args.blur:
        result["blurred"] = {
            f"sigma_{sigma:g}": blurred_entry(images, labels, classes, judges, sigma)
            for sigma in args.blur
        }
    for run in args.runs:
        vae_dir = run / "synth" / "vae"
        start = time.perf_counter()
        recon = reconstructed_images(load_vae(run).to(device), images, device)
        stage = json.loads((run / "stages" / "vae.json").read_text())
        result["vaes"][str(run)] = {
            "settings": stage["inputs"]["sections"]["vae"],
            "train_seconds": round(stage["seconds"]),
            "metrics": json.loads((vae_dir / "metrics.json").read_text()),
            "chroma": chroma_per_class(recon, labels, classes),
            "reconstructed": {
                name: recall_per_class(j, recon, labels, classes) for name, j in judges.items()
            },
            "probe_seconds": round(time.perf_counter() - start, 1),
        }
    # A perceptual VAE measures in baseline/model's features: its seeds judge independently.
    independent = [name for name in judges if name.startswith("baseline_seeds")] or list(judges)
    result["summary_judges"] = independent
    for run, entry in [*result["vaes"].items(), *result.get("blurred", {}).items()]:
        mean = {
            c: round(float(np.mean([entry["reconstructed"][j][c] for j in independent])), 2)
            for c in classes
        }
        entry["independent_mean"] = mean
        print(run, f"psnr {entry['metrics']['psnr']:.1f}", mean)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))  # with the summary, not before it


if __name__ == "__main__":
    main()

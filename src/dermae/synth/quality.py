"""How good, how faithful and how novel are the synthetic images?

Features come from a classifier trained on the real train split (Inception weights cannot be
downloaded here); any module mapping [0, 1] images to feature vectors can replace it, e.g.
an Inception network where weights exist. Reported (synth/synth_quality.json):

- FID and KID (torchmetrics) per class and overall, synthetic vs real train images of the
  same class. With a few hundred images FID is strongly biased upwards: compare runs at equal
  counts, or read KID, which is unbiased.
- k-NN precision / recall (Kynkäänniemi et al. 2019, k=3) in the same feature space.
- Class fidelity: accuracy of the real-trained classifier on the synthetic images, beside two
  ceilings on real validation images: its accuracy on them, and on the VAE's reconstructions
  of them (`vae_ceiling_fidelity`). A UNet paints in the VAE's latent space, so a class whose
  reconstructions the classifier no longer recognises cannot be painted recognisably either.
- Memorisation: each synthetic image's nearest real train image in feature and pixel space.
  The near-copy threshold is the 1st percentile of real-to-real nearest-neighbour distances
  between different lesions (group_id differs): closer than nearly any two distinct real
  lesions. Flagged pairs are listed and the closest pairs drawn side by side.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from dermae.classify.model import Classifier, load_classifier
from dermae.config import Config
from dermae.data.prepared import ACCEPTED_FILE, load_prepared
from dermae.synth.common import (
    MALIGNANT_NAMES,
    VAE_DIR,
    class_of_rows,
    default_device,
    image_grid,
    save_png,
    synth_dir,
)
from dermae.synth.vae import load_vae, reconstruct

NEAR_COPY_PERCENTILE = 1.0
PIXEL_SIDE = 32  # pixel distances on area-downsampled images: near copies stay near, 4x less memory
DEFAULT_CLASSIFIER = ("baseline", "model")  # <run_dir>/baseline/model: the real-data baseline


class ClassifierFeatures(nn.Module):
    """Pooled pre-logit features of a dermae Classifier; input [N, 3, H, W] in [0, 1]."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = int(classifier.net.num_features)
        self.image_size = int(classifier.config["image_size"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", antialias=True)
        x = (images - self.classifier.mean) / self.classifier.std
        net = self.classifier.net
        return net.forward_head(net.forward_features(x), pre_logits=True)


class _Precomputed(nn.Module):
    """Identity 'feature extractor': lets torchmetrics take features computed once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ----------------------------------------------------------------------------- metrics


def fid_kid(
    real: torch.Tensor, fake: torch.Tensor, seed: int = 0, kid_subsets: int = 50
) -> dict[str, float]:
    """FID and KID (mean, std) between two feature sets [N, D] (torchmetrics)."""
    if len(real) < 2 or len(fake) < 2:
        return {"fid": float("nan"), "kid": float("nan"), "kid_std": float("nan")}
    d = real.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(d))
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    # Subsets of half the smaller set (at most 1000) so that kid_std means something.
    subset = max(2, min(1000, len(real) // 2, len(fake) // 2))
    with warnings.catch_warnings():  # "KID keeps all features in memory": ours are small
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(
            feature=_Precomputed(d), subsets=kid_subsets, subset_size=subset
        )
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # KID draws random subsets
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every row of x to its k-th nearest other row."""
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    k = min(k, len(x) - 1)
    return d.kthvalue(k, dim=1).values


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, max_points: int = 4000, seed: int = 0
) -> dict[str, float]:
    """k-NN precision (fakes inside the real manifold) and recall (reals inside the fake one).

    Each side is randomly subsampled to `max_points` (the pairwise matrices grow as N^2).
    """
    if len(real) <= 1 or len(fake) <= 1:
        return {"precision": float("nan"), "recall": float("nan")}
    g = torch.Generator().manual_seed(seed)
    if len(real) > max_points:
        real = real[torch.randperm(len(real), generator=g)[:max_points]]
    if len(fake) > max_points:
        fake = fake[torch.randperm(len(fake), generator=g)[:max_points]]
    real_r, fake_r = knn_radii(real, k), knn_radii(fake, k)
    d = torch.cdist(fake, real)  # [F, R]
    precision = (d <= real_r[None, :]).any(dim=1).float().mean()
    recall = (d.t() <= fake_r[None, :]).any(dim=1).float().mean()
    return {"precision": float(precision), "recall": float(recall)}


def nearest(
    queries: torch.Tensor, refs: torch.Tensor, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and L2 distance of each query's nearest reference row."""
    idx, dist = [], []
    for s in range(0, len(queries), chunk):
        d = torch.cdist(queries[s : s + chunk], refs)
        v, i = d.min(dim=1)
        idx.append(i)
        dist.append(v)
    return torch.cat(idx), torch.cat(dist)


def other_lesion_nn_distances(
    x: torch.Tensor, groups: np.ndarray, max_queries: int = 2000, seed: int = 0
) -> torch.Tensor:
    """Each (sampled) row's distance to its nearest row of a DIFFERENT lesion."""
    rng = np.random.default_rng(seed)
    q = np.arange(len(x))
    if len(q) > max_queries:
        q = np.sort(rng.choice(q, max_queries, replace=False))
    codes = pd.factorize(pd.Series(groups))[0]
    codes_t = torch.from_numpy(codes)
    out = []
    for s in range(0, len(q), 512):
        qi = torch.from_numpy(q[s : s + 512])
        d = torch.cdist(x[qi], x)
        d[codes_t[qi][:, None] == codes_t[None, :]] = float("inf")  # same lesion (and self)
        out.append(d.min(dim=1).values)
    return torch.cat(out)


# ----------------------------------------------------------------------------- helpers


@torch.no_grad()
def _run(module: nn.Module, images: np.ndarray, device: torch.device, batch: int = 256):
    """module over uint8 [N, H, W, 3] images in batches -> CPU float tensor."""
    out = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch])).to(device)
        x = x.permute(0, 3, 1, 2).float() / 255
        out.append(module(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def reconstructed_images(
    vae: nn.Module, images: np.ndarray, device: torch.device, batch: int = 256
) -> np.ndarray:
    """uint8 [N, H, W, 3] -> the VAE's reconstructions (posterior mode), uint8 like the stored
    synthetic images: the closest a UNet painting the perfect latent could come."""
    out = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch])).to(device)
        x = x.permute(0, 3, 1, 2).float() / 255
        recon = reconstruct(vae, x).float().cpu()
        out.append((recon * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else images[:0].copy()


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, D] in [0, 1], at most PIXEL_SIDE px."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] > PIXEL_SIDE:
        x = F.interpolate(x, size=PIXEL_SIDE, mode="area")
    return x.flatten(1)


def _fidelity(
    logits: torch.Tensor,
    classifier_names: list[str],
    malignant_classes: list[str],
    targets: list[str],
) -> np.ndarray:
    """Per synthetic image: does the classifier agree with the class it was made for?"""
    probs = logits.softmax(dim=1)
    if set(targets) <= set(classifier_names):
        pred = [classifier_names[i] for i in probs.argmax(dim=1).tolist()]
        return np.array([p == t for p, t in zip(pred, targets, strict=True)])
    if set(targets) <= set(MALIGNANT_NAMES):
        mal = [i for i, c in enumerate(classifier_names) if c in malignant_classes]
        risk = probs[:, mal].sum(dim=1) > 0.5
        return np.array(
            [bool(r) == (t == MALIGNANT_NAMES[1]) for r, t in zip(risk, targets, strict=True)]
        )
    raise ValueError(f"classifier classes {classifier_names} cannot judge classes {set(targets)}")


def _recognised(
    judges: list[Classifier], images: np.ndarray, targets: list[str], device: torch.device
) -> np.ndarray:
    """Per uint8 image, the fraction of `judges` that give it its class in `targets`."""
    hits = [
        _fidelity(
            _run(judge.to(device).eval(), images, device),
            list(judge.config["class_names"]),
            list(judge.config["malignant_classes"]),
            targets,
        )
        for judge in judges
    ]
    return np.mean(hits, axis=0)


def _near_copy(table: pd.DataFrame) -> np.ndarray:
    return table["near_copy_feature"].to_numpy() | table["near_copy_pixel"].to_numpy()


def _accepted(table: pd.DataFrame, fidelity: np.ndarray) -> np.ndarray:
    """The classifier filter's rule: recognised as its class and a near-copy in neither space."""
    return fidelity & ~_near_copy(table)


def write_filter(
    kind: str, data_root: Path, table: pd.DataFrame, fidelity: np.ndarray | None
) -> dict:
    """Keep synthetic images recognised as their class and not near-copies (`classifier`).

    Writes `data/synthetic/accepted.csv`, which `load_prepared` applies for every later stage;
    `none` removes it. Returns the acceptance rates for synth_quality.json.
    """
    path = data_root / "synthetic" / ACCEPTED_FILE
    if kind == "none":
        path.unlink(missing_ok=True)
        return {"kind": "none"}
    if kind != "classifier":
        raise ValueError(f"sample.filter must be 'none' or 'classifier', got '{kind}'")
    if fidelity is None:
        raise ValueError("sample.filter=classifier needs the real-trained baseline classifier")
    near_copy = _near_copy(table)
    verdicts = pd.DataFrame(
        {
            "image_id": table["image_id"],
            "class": table["class"],
            "recognised": fidelity,
            "near_copy": near_copy,
            "accepted": _accepted(table, fidelity),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    verdicts.to_csv(tmp, index=False)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written verdict file
    per_class = verdicts.groupby("class")["accepted"].agg(["sum", "count"])
    return {
        "kind": "classifier",
        "rule": "baseline argmax == conditioning class, and no near-copy in either space",
        "accepted": int(verdicts["accepted"].sum()),
        "total": len(verdicts),
        "acceptance_rate": float(verdicts["accepted"].mean()) if len(verdicts) else None,
        "per_class": {
            c: {
                "accepted": int(r["sum"]),
                "total": int(r["count"]),
                "rate": float(r["sum"] / r["count"]),
            }
            for c, r in per_class.iterrows()
        },
    }


def _pairs_png(
    synth: np.ndarray, real: np.ndarray, order: np.ndarray, path: Path, n: int = 16
) -> None:
    """Closest pairs, synthetic (top row) above its nearest real image (bottom row)."""
    pick = order[:n]
    if len(pick):
        save_png(image_grid([synth[pick], real[pick]]), path)


def _matched_real(real_class: np.ndarray, fake_counts: dict[str, int], seed: int) -> np.ndarray:
    """Indices of real images drawn with the synthetic set's class proportions."""
    rng = np.random.default_rng(seed)
    scale = min([1.0] + [(real_class == c).sum() / n for c, n in fake_counts.items() if n > 0])
    picks = []
    for c, n in fake_counts.items():
        pool = np.flatnonzero(real_class == c)
        take = min(len(pool), int(round(n * scale)))
        if take:
            picks.append(rng.choice(pool, take, replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------- entry


def evaluate_synthetic(
    cfg: Config,
    run_dir: str | Path,
    classifier: Classifier | str | Path | None = None,
    feature_extractor: nn.Module | None = None,
    independent: Sequence[Classifier | str | Path] = (),
) -> dict:
    """Score `<run_dir>/data/synthetic` against the real train split; write synth_quality.json.

    classifier: a real-trained dermae Classifier (or its checkpoint folder; default
    `<run_dir>/baseline/model`); it gives the features (unless `feature_extractor` is passed)
    and the class-fidelity numbers, and the filter judges with it. `independent`: more
    real-trained classifiers (other seeds of the baseline) whose mean fidelity is reported as
    `independent_*`, on all images and on those the filter keeps: the same classifier that
    chose the images cannot say how recognisable they are.
    """
    run_dir = Path(run_dir)
    default = run_dir.joinpath(*DEFAULT_CLASSIFIER)
    if classifier is None and feature_extractor is None and (default / "config.json").exists():
        classifier = default
    if isinstance(classifier, str | Path):
        classifier, _ = load_classifier(classifier)
    if classifier is None and feature_extractor is None:
        raise ValueError(
            f"evaluate_synthetic needs a classifier trained on real data: none at {default}; "
            "run `dermae train` (the baseline) first, or pass a classifier / feature_extractor"
        )
    device = default_device()
    features = feature_extractor or ClassifierFeatures(classifier)
    features = features.to(device).eval()

    data = load_prepared(run_dir, with_synthetic=True, filtered=False)
    if "synthetic" not in data.arrays:
        raise FileNotFoundError(
            f"{data.root / 'synthetic'} holds no synthetic images: run `dermae synth sample` first"
        )
    meta_path = synth_dir(run_dir) / "unet" / "dermae_synth.json"
    conditioning = (
        json.loads(meta_path.read_text())["conditioning"] if meta_path.exists() else ("diagnosis")
    )
    real_rows = data.rows("train")  # real train rows only
    synth_rows = data.manifest[data.manifest["source"] == "synthetic"].reset_index(drop=True)
    real_img = np.asarray(data.arrays["real"][real_rows["cache_index"].to_numpy()])
    synth_img = np.asarray(data.arrays["synthetic"][synth_rows["cache_index"].to_numpy()])
    real_class = class_of_rows(real_rows, conditioning).to_numpy()
    synth_class = synth_rows["diagnosis"].astype(str).to_numpy()
    classes = [c for c in dict.fromkeys(synth_class)]

    real_f = _run(features, real_img, device)
    synth_f = _run(features, synth_img, device)
    real_p, synth_p = _pixels(real_img), _pixels(synth_img)

    report: dict = {
        "reference": "real train split",
        "feature_extractor": type(features).__name__,
        "feature_dim": int(real_f.shape[1]),
        "synthetic_images": len(synth_rows),
        "real_images": len(real_rows),
        "per_class": {},
    }
    fidelity = None
    if classifier is not None:
        fidelity = _recognised([classifier], synth_img, synth_class.tolist(), device) == 1
    others = [j if isinstance(j, Classifier) else load_classifier(j)[0] for j in independent]
    judged = {"": [classifier] if classifier is not None else [], "independent_": others}
    # Mean over the independent judges: a classifier that neither filtered these images nor
    # gave the VAE its perceptual features.
    second = _recognised(others, synth_img, synth_class.tolist(), device) if others else None

    # Memorisation: nearest real train image of each synthetic one, in two spaces.
    groups = real_rows["group_id"].astype(str).to_numpy()
    spaces = {
        "feature": (F.normalize(real_f, dim=1), F.normalize(synth_f, dim=1)),
        "pixel": (real_p, synth_p),
    }
    memo = {}
    table = pd.DataFrame({"image_id": synth_rows["image_id"], "class": synth_class})
    for name, (ref, query) in spaces.items():
        calib = other_lesion_nn_distances(ref, groups, seed=cfg.seed)
        threshold = float(np.percentile(calib.numpy(), NEAR_COPY_PERCENTILE))
        idx, dist = nearest(query, ref)
        flagged = (dist < threshold).numpy()
        table[f"nn_{name}_id"] = real_rows["image_id"].to_numpy()[idx.numpy()]
        table[f"d_{name}"] = dist.numpy()
        table[f"near_copy_{name}"] = flagged
        memo[name] = {
            "threshold": threshold,
            "threshold_rule": f"percentile {NEAR_COPY_PERCENTILE:g} of real-to-real "
            "nearest-neighbour distances between different lesions",
            "space": "L2 of unit-normalised features"
            if name == "feature"
            else f"L2 of pixels in [0, 1], area-downsampled to at most {PIXEL_SIDE} px",
            "real_to_real_median": float(calib.median()),
            "synthetic_to_real_median": float(dist.median()),
            "near_copies": int(flagged.sum()),
        }
        order = np.argsort(dist.numpy())
        _pairs_png(
            synth_img, real_img[idx.numpy()], order, synth_dir(run_dir) / f"nearest_{name}.png"
        )
    report["memorisation"] = memo
    table.to_csv(synth_dir(run_dir) / "memorisation.csv", index=False)
    report["filter"] = write_filter(cfg.sample.filter, data.root, table, fidelity)
    accepted = np.ones(len(table), bool)  # what later stages read: all, unless filtered
    if report["filter"]["kind"] == "classifier":
        accepted = _accepted(table, fidelity)

    for c in classes:
        fake_m = synth_class == c
        real_m = real_class == c
        entry = {"synthetic": int(fake_m.sum()), "real": int(real_m.sum())}
        entry.update(fid_kid(real_f[real_m], synth_f[fake_m], seed=cfg.seed))
        entry.update(precision_recall(real_f[real_m], synth_f[fake_m], seed=cfg.seed))
        if fidelity is not None:
            entry["class_fidelity"] = float(fidelity[fake_m].mean())
        if second is not None:
            entry["independent_fidelity"] = float(second[fake_m].mean())
            kept = fake_m & accepted
            entry["independent_fidelity_of_accepted"] = (
                float(second[kept].mean()) if kept.any() else None
            )
        for name in spaces:
            entry[f"near_copies_{name}"] = int(table.loc[fake_m, f"near_copy_{name}"].sum())
        report["per_class"][c] = entry

    counts = {c: int((synth_class == c).sum()) for c in classes}
    matched = _matched_real(real_class, counts, cfg.seed)
    overall = {"real_matched": len(matched)}
    overall.update(fid_kid(real_f[matched], synth_f, seed=cfg.seed))
    overall.update(precision_recall(real_f[matched], synth_f, seed=cfg.seed))
    if fidelity is not None:
        overall["class_fidelity"] = float(fidelity.mean())
    if second is not None:
        overall["independent_fidelity"] = float(second.mean())
        overall["independent_judges"] = len(others)
        report["independent_judges"] = [
            str(j) if isinstance(j, str | Path) else type(j).__name__ for j in independent
        ]
    # The judges on real VAL images of the synthesised classes, and on the VAE's
    # reconstructions of them: two ceilings of what synthetic images can reach.
    val_rows = data.rows("val")
    val_class = class_of_rows(val_rows, conditioning).to_numpy()
    keep = np.isin(val_class, classes)
    if keep.any() and (classifier is not None or others):
        val_img = np.asarray(data.arrays["real"][val_rows["cache_index"].to_numpy()[keep]])
        views = {"real_val_fidelity": val_img}
        if (synth_dir(run_dir) / VAE_DIR / "config.json").exists():
            vae = load_vae(run_dir).to(device)
            views["vae_ceiling_fidelity"] = reconstructed_images(vae, val_img, device)
        targets = val_class[keep]
        for prefix, judges in judged.items():
            for key, images in views.items():
                if not judges:
                    break
                hits = _recognised(judges, images, targets.tolist(), device)
                overall[prefix + key] = float(hits.mean())
                for c in classes:
                    if (targets == c).any():
                        report["per_class"][c][prefix + key] = float(hits[targets == c].mean())
    report["overall"] = overall
    report["note"] = (
        "overall compares the synthetic set with real train images drawn in the same class "
        "proportions; FID is biased upwards at small counts (compare equal counts; KID is "
        "unbiased)"
    )
    out = synth_dir(run_dir) / "synth_quality.json"
    out.write_text(json.dumps(report, indent=2))
    return report

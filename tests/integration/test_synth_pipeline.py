"""train-vae -> train -> sample -> evaluate on a tiny generated dataset (16 px, 3 classes)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dermae.engine.loop as loop
import dermae.synth.ldm as ldm_module
import dermae.synth.sample as sample_module
from dermae.classify.model import build_classifier, classifier_config, save_classifier
from dermae.config import Config, LDMConfig, SampleConfig, TrainConfig, VAEConfig
from dermae.data.prepared import MANIFEST_COLUMNS, load_prepared
from dermae.synth.ldm import train_ldm
from dermae.synth.quality import evaluate_synthetic, reconstructed_images
from dermae.synth.sample import SamplingError, read_manifest, sample_balanced
from dermae.synth.vae import load_vae, train_vae

SIZE = 16
CLASSES = ["bcc", "df", "nv"]
# lesions per (class, split); each lesion has one or two images
LESIONS = {"bcc": (5, 2, 2), "df": (3, 1, 1), "nv": (14, 3, 3)}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waits when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_prepared(run_dir: Path) -> pd.DataFrame:
    """A prepared dataset in the `dermae data prepare` layout: coloured blobs per class."""
    rng = np.random.default_rng(0)
    colours = {"bcc": (200, 120, 160), "df": (150, 90, 60), "nv": (90, 60, 40)}
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rows, images = [], []
    for c in CLASSES:
        for split, n in zip(("train", "val", "test"), LESIONS[c], strict=True):
            for lesion in range(n):
                for k in range(1 + lesion % 2):
                    cx, cy = rng.uniform(5, 11, 2)
                    blob = (xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(9, 20)
                    img = np.empty((SIZE, SIZE, 3), np.float32)
                    img[:] = (225, 170, 150)
                    img[blob] = colours[c]
                    img += rng.normal(0, 6, img.shape)
                    images.append(np.clip(img, 0, 255).astype(np.uint8))
                    image_id = f"{c}_{split}_{lesion}_{k}"
                    rows.append(
                        {
                            "image_id": image_id,
                            "path": f"{image_id}.jpg",
                            "diagnosis": c,
                            "label": CLASSES.index(c),
                            "malignant": int(c == "bcc"),
                            "group_id": f"L_{c}_{split}_{lesion}",
                            "age": 50,
                            "sex": "male",
                            "site": "back",
                            "dx_type": "histo",
                            "split": split,
                            "source": "real",
                            "cache_index": len(images) - 1,
                        }
                    )
    data = run_dir / "data"
    data.mkdir(parents=True)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest.to_csv(data / "manifest.csv", index=False)
    np.save(data / "images.npy", np.stack(images))
    info = {
        "class_names": CLASSES,
        "malignant_classes": ["bcc"],
        "image_size": SIZE,
        "counts": manifest.groupby("split").size().to_dict(),
        "skipped": [],
    }
    (data / "info.json").write_text(json.dumps(info))
    return manifest


def tiny_config(run_dir: Path, **sample) -> Config:
    train = TrainConfig(max_steps=4, batch_size=8, lr=2e-3, log_every=2, seed=0)
    return Config(
        run_dir=str(run_dir),
        vae=VAEConfig(block_out_channels=(8, 16), train=train, scale_images=64),
        ldm=LDMConfig(
            block_out_channels=(8, 16),
            attention_head_dim=8,
            train=TrainConfig(max_steps=4, batch_size=8, lr=2e-3, ema_decay=0.9, seed=0),
        ),
        sample=SampleConfig(
            **{"balance": "majority", "max_per_class": 5, "steps": 3, "batch_size": 4, **sample}
        ),
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run dir with data + trained VAE and UNet; the spies record what training saw."""
    run_dir = tmp_path_factory.mktemp("synth_run")
    make_prepared(run_dir)
    cfg = tiny_config(run_dir)
    seen = {"fit": [], "encoded": []}
    real_fit, real_encode = loop.fit, ldm_module.encode_dataset

    def fit_spy(task, dataset, *args, **kwargs):
        seen["fit"].append(dataset)
        return real_fit(task, dataset, *args, **kwargs)

    def encode_spy(vae, dataset, *args, **kwargs):
        seen["encoded"].append(dataset.rows.copy())
        return real_encode(vae, dataset, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        torch.set_num_threads(1)
        mp.setattr("dermae.synth.vae.fit", fit_spy)
        mp.setattr("dermae.synth.ldm.fit", fit_spy)
        mp.setattr("dermae.synth.ldm.encode_dataset", encode_spy)
        train_vae(cfg, run_dir)
        train_ldm(cfg, run_dir)
    (run_dir / "seen.json").write_text(
        json.dumps(
            {
                "vae_rows": seen["fit"][0].rows[["split", "source"]].to_dict("list"),
                "ldm_len": len(seen["fit"][1]),
                "encoded": seen["encoded"][0][["split", "source"]].to_dict("list"),
            }
        )
    )
    return run_dir


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("synthetic"))
    return dst


def test_only_real_train_rows_reach_generator_training(trained_run):
    seen = json.loads((trained_run / "seen.json").read_text())
    n_train = sum(
        (1 + np.arange(LESIONS[c][0]) % 2).sum() for c in CLASSES
    )  # images of train lesions
    assert set(seen["vae_rows"]["split"]) == {"train"}
    assert set(seen["vae_rows"]["source"]) == {"real"}
    assert len(seen["vae_rows"]["split"]) == n_train
    assert set(seen["encoded"]["split"]) == {"train"}
    assert seen["ldm_len"] == n_train


def test_vae_and_unet_artifacts(trained_run):
    sd = trained_run / "synth"
    metrics = json.loads((sd / "vae" / "metrics.json").read_text())
    assert metrics["split"] == "val"
    assert 0 < metrics["psnr"] < 60 and -1 <= metrics["ssim"] <= 1
    vae_cfg = json.loads((sd / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == pytest.approx(metrics["scaling_factor"])
    assert metrics["scaling_factor"] > 0
    assert (sd / "vae" / "reconstructions.png").exists()
    meta = json.loads((sd / "unet" / "dermae_synth.json").read_text())
    assert meta["class_names"] == CLASSES
    assert meta["null_id"] == 3
    assert meta["latent_shape"] == [4, 8, 8]
    assert meta["train_counts"] == {"bcc": 7, "df": 4, "nv": 21}
    assert (sd / "scheduler" / "scheduler_config.json").exists()


def test_latent_cache_is_reused_and_matches_the_vae(trained_run, tmp_path, monkeypatch):
    from safetensors import safe_open

    from dermae.synth.vae import load_vae

    path = trained_run / "synth" / ldm_module.LATENT_CACHE
    with safe_open(str(path), framework="pt") as f:
        mean = f.get_tensor("mean")
        key = f.metadata()
    assert key["count"] == "32"
    data = load_prepared(trained_run)
    rows = data.rows("train")
    vae = load_vae(trained_run)
    first = data.dataset(rows)[0]["image"][None]
    with torch.no_grad():
        expected = vae.encode(first * 2 - 1).latent_dist.mean
    torch.testing.assert_close(mean[:1], expected, atol=1e-5, rtol=1e-4)

    # Same VAE and rows: loaded, not re-encoded. Another VAE id: re-encoded.
    cache = tmp_path / "cache.safetensors"
    shutil.copy(path, cache)
    calls = []
    real_encode = ldm_module.encode_dataset
    monkeypatch.setattr(
        ldm_module, "encode_dataset", lambda *a, **k: calls.append(1) or real_encode(*a, **k)
    )
    ids = rows["image_id"].astype(str).tolist()
    again, _ = ldm_module.cached_latents(vae, data.dataset(rows), ids, key["vae_id"], cache)
    assert calls == [] and torch.equal(again, mean)
    ldm_module.cached_latents(vae, data.dataset(rows), ids, "another-vae", cache)
    assert calls == [1]


def test_sample_balanced_exact_counts_and_prepared_pickup(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run)
    summary = sample_balanced(cfg, run, progress=False)
    # train counts bcc 7, df 4, nv 21 -> majority plan 14, 17, 0, capped at 5.
    assert summary["plan"] == {"bcc": 5, "df": 5, "nv": 0}
    assert summary["generated"] == 10
    manifest = pd.read_csv(run / "data/synthetic/manifest.csv")
    assert manifest["image_id"].is_unique
    assert manifest["diagnosis"].value_counts().to_dict() == {"bcc": 5, "df": 5}
    assert manifest["cache_index"].tolist() == list(range(10))
    assert set(manifest["split"]) == {"train"} and set(manifest["source"]) == {"synthetic"}
    assert (manifest["group_id"] == manifest["image_id"]).all()
    assert manifest.loc[manifest["diagnosis"] == "bcc", "malignant"].eq(1).all()
    assert manifest.loc[manifest["diagnosis"] == "df", "label"].eq(1).all()
    assert set(manifest.columns) >= {"seed", "guidance", "steps", "model_id"}
    data = load_prepared(run)
    assert data.arrays["synthetic"].shape == (10, SIZE, SIZE, 3)
    rows = data.rows("train", include_synthetic=True)
    assert (rows["source"] == "synthetic").sum() == 10
    ds = data.dataset(rows)
    item = ds[len(ds) - 1]
    png = np.asarray(Image.open(run / "data" / manifest["path"].iloc[-1]))
    assert torch.equal(item["image"], torch.from_numpy(png).permute(2, 0, 1).float() / 255)
    for c in CLASSES:
        assert (run / "synth" / f"samples_{c}.png").exists()


def test_interrupted_sampling_resumes_without_duplicates(trained_run, tmp_path):
    clean = copy_run(trained_run, tmp_path / "clean")
    sample_balanced(tiny_config(clean), clean, progress=False)

    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run)
    real_generate = sample_module.generate
    calls = {"n": 0}

    def dying_generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real_generate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sample_module, "generate", dying_generate)
        with pytest.raises(KeyboardInterrupt):
            sample_balanced(cfg, run, progress=False)
    manifest_path = run / "data/synthetic/manifest.csv"
    assert len(read_manifest(manifest_path)) == 4  # one batch made it
    assert not (run / "data/synthetic/images.npy").exists()
    with open(manifest_path, "a") as f:
        f.write("syn_df_000003,synthetic/ima")  # and a half-written row

    summary = sample_balanced(cfg, run, progress=False)
    assert summary["generated"] == 6
    resumed = pd.read_csv(manifest_path)
    reference = pd.read_csv(clean / "data/synthetic/manifest.csv")
    assert resumed["image_id"].is_unique and len(resumed) == 10
    pd.testing.assert_frame_equal(resumed, reference)
    # Same seeds -> the same images as an uninterrupted run.
    a = np.load(run / "data/synthetic/images.npy")
    b = np.load(clean / "data/synthetic/images.npy")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1

    # A rerun with the same settings changes nothing.
    files = [manifest_path, run / "data/synthetic/images.npy"]
    stamps = [p.stat().st_mtime_ns for p in files]
    again = sample_balanced(cfg, run, progress=False)
    assert again["generated"] == 0
    assert [p.stat().st_mtime_ns for p in files] == stamps

    # A larger cap adds only the missing images; a smaller one trims.
    more = sample_balanced(tiny_config(run, max_per_class=7), run, progress=False)
    assert more["generated"] == 4 and more["total_synthetic"] == 14
    fewer = sample_balanced(tiny_config(run, max_per_class=2), run, progress=False)
    assert fewer["generated"] == 0 and fewer["total_synthetic"] == 4
    final = pd.read_csv(manifest_path)
    assert final["image_id"].tolist() == [
        "syn_bcc_000000",
        "syn_bcc_000001",
        "syn_df_000000",
        "syn_df_000001",
    ]
    assert np.load(run / "data/synthetic/images.npy").shape[0] == 4

    with pytest.raises(SamplingError, match="guidance"):
        sample_balanced(tiny_config(run, guidance=5.0), run, progress=False)
    # Without settings.json the rows' model_id still guards against mixing generators.
    (run / "data/synthetic/settings.json").unlink()
    final.assign(model_id="0123456789ab").to_csv(manifest_path, index=False)
    with pytest.raises(SamplingError, match="another generator"):
        sample_balanced(tiny_config(run, max_per_class=2), run, progress=False)
    assert sample_balanced(tiny_config(run), run, overwrite=True, progress=False)["generated"] == 10


def test_evaluate_synthetic_flags_a_planted_copy(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run)
    sample_balanced(cfg, run, progress=False)
    # Plant a near copy: synthetic image 0 (bcc) := a real train bcc image.
    data = load_prepared(run)
    real_rows = data.rows("train")
    victim = real_rows[real_rows["diagnosis"] == "bcc"].iloc[0]
    synth = np.load(run / "data/synthetic/images.npy")
    synth[0] = data.arrays["real"][victim["cache_index"]]
    np.save(run / "data/synthetic/images.npy", synth)

    torch.manual_seed(0)
    clf = build_classifier(classifier_config("resnet10t", CLASSES, ["bcc"], SIZE))
    save_classifier(tmp_path / "clf", clf)
    report = evaluate_synthetic(cfg, run, classifier=tmp_path / "clf")

    assert report["synthetic_images"] == 10
    assert set(report["per_class"]) == {"bcc", "df"}
    bcc = report["per_class"]["bcc"]
    assert bcc["synthetic"] == 5 and bcc["real"] == 7
    assert 0.0 <= bcc["class_fidelity"] <= 1.0
    for space in ("pixel", "feature"):
        assert report["memorisation"][space]["threshold"] > 0
        assert report["per_class"]["bcc"][f"near_copies_{space}"] >= 1
    table = pd.read_csv(run / "synth" / "memorisation.csv")
    first = table.iloc[0]
    assert first["image_id"] == "syn_bcc_000000"
    assert first["nn_pixel_id"] == victim["image_id"] and first["d_pixel"] < 1e-4
    assert bool(first["near_copy_pixel"]) and bool(first["near_copy_feature"])
    assert (run / "synth" / "nearest_pixel.png").exists()
    assert (run / "synth" / "synth_quality.json").exists()
    overall = report["overall"]
    assert overall["real_matched"] == 8  # df has 4 real: both classes scaled to 4
    assert np.isfinite(overall["fid"]) and np.isfinite(overall["kid"])
    assert 0.0 <= overall["precision"] <= 1.0 and 0.0 <= overall["recall"] <= 1.0

    # The VAE ceiling: the same classifier on the VAE's reconstructions of real val images.
    val = data.rows("val")
    val = val[val["diagnosis"].isin(["bcc", "df"])]
    recon = reconstructed_images(
        load_vae(run), data.arrays["real"][val["cache_index"].to_numpy()], torch.device("cpu")
    )
    with torch.no_grad():
        pred = (
            clf.eval()(torch.from_numpy(recon).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
        )
    hit = np.array(CLASSES)[pred] == val["diagnosis"].to_numpy()
    assert overall["vae_ceiling_fidelity"] == pytest.approx(hit.mean())
    for c in ("bcc", "df"):
        in_c = (val["diagnosis"] == c).to_numpy()
        assert report["per_class"][c]["vae_ceiling_fidelity"] == pytest.approx(hit[in_c].mean())


def test_independent_judges_score_all_images_and_those_the_filter_keeps(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    cfg = tiny_config(run, filter="classifier")
    sample_balanced(cfg, run, progress=False)
    torch.manual_seed(0)
    save_classifier(
        tmp_path / "judge", build_classifier(classifier_config("resnet10t", CLASSES, ["bcc"], SIZE))
    )
    torch.manual_seed(1)
    other = build_classifier(classifier_config("resnet10t", CLASSES, ["bcc"], SIZE)).eval()
    report = evaluate_synthetic(cfg, run, classifier=tmp_path / "judge", independent=[other])

    data = load_prepared(run, filtered=False)
    synth = data.manifest[data.manifest["source"] == "synthetic"].reset_index(drop=True)
    images = data.arrays["synthetic"][synth["cache_index"].to_numpy()]
    with torch.no_grad():
        pred = other(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    hit = np.array(CLASSES)[pred.numpy()] == synth["diagnosis"].to_numpy()
    kept = pd.read_csv(run / "data/synthetic/accepted.csv")["accepted"].to_numpy()
    for c in ("bcc", "df"):
        entry, in_c = report["per_class"][c], (synth["diagnosis"] == c).to_numpy()
        assert entry["independent_fidelity"] == pytest.approx(hit[in_c].mean())
        if (in_c & kept).any():
            assert entry["independent_fidelity_of_accepted"] == pytest.approx(
                hit[in_c & kept].mean()
            )
        else:
            assert entry["independent_fidelity_of_accepted"] is None
        assert 0.0 <= entry["independent_vae_ceiling_fidelity"] <= 1.0
    assert report["overall"]["independent_fidelity"] == pytest.approx(hit.mean())
    assert report["overall"]["independent_judges"] == 1


def test_class_sampling_power_reaches_the_unet_loop(trained_run, monkeypatch):
    class Captured(Exception):
        pass

    seen = {}

    def fit_stub(task, dataset, *args, **kwargs):
        seen["weights"], seen["cond"] = kwargs["sampler_weights"], dataset.cond.numpy()
        raise Captured

    monkeypatch.setattr("dermae.synth.ldm.fit", fit_stub)
    base = tiny_config(trained_run)
    cfg = dataclasses.replace(base, ldm=dataclasses.replace(base.ldm, class_sampling_power=1.0))
    with pytest.raises(Captured):
        train_ldm(cfg, trained_run)
    weights, cond = seen["weights"], seen["cond"]
    # Every class has the same total draw weight: rare df as likely as common nv.
    totals = [weights[cond == c].sum() for c in np.unique(cond)]
    assert totals == pytest.approx([totals[0]] * len(totals))


def test_vae_class_sampling_power_reaches_the_vae_loop(trained_run, monkeypatch):
    class Captured(Exception):
        pass

    seen = {}

    def fit_stub(task, dataset, *args, **kwargs):
        seen["weights"], seen["labels"] = kwargs["sampler_weights"], dataset.labels
        raise Captured

    monkeypatch.setattr("dermae.synth.vae.fit", fit_stub)
    base = tiny_config(trained_run)
    for power, balanced in ((0.0, None), (1.0, True)):
        cfg = dataclasses.replace(
            base, vae=dataclasses.replace(base.vae, class_sampling_power=power)
        )
        with pytest.raises(Captured):
            train_vae(cfg, trained_run)
        if balanced is None:
            assert seen["weights"] is None  # a plain shuffle
            continue
        weights, labels = seen["weights"], seen["labels"]
        totals = [weights[labels == c].sum() for c in np.unique(labels)]
        assert len(totals) == 3 and totals == pytest.approx([totals[0]] * 3)

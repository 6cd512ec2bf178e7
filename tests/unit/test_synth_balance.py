"""Balancing arithmetic, seeds and ids, manifest repair, quality-metric helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from dermae.config import ConfigError
from dermae.synth.quality import (
    fid_kid,
    nearest,
    other_lesion_nn_distances,
    precision_recall,
)
from dermae.synth.sample import (
    SYNTH_COLUMNS,
    append_rows,
    image_seed,
    parse_synthetic_id,
    plan_balance,
    read_manifest,
    synthetic_id,
)

COUNTS = {"akiec": 10, "bcc": 25, "df": 3, "nv": 200}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waits when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_plan_majority():
    assert plan_balance(COUNTS, "majority") == {"akiec": 190, "bcc": 175, "df": 197, "nv": 0}


def test_plan_ratio_and_rounding():
    assert plan_balance(COUNTS, "ratio:0.5") == {"akiec": 90, "bcc": 75, "df": 97, "nv": 0}
    # 0.1 x 200 = 20: classes above the target get nothing.
    assert plan_balance(COUNTS, "ratio:0.1") == {"akiec": 10, "bcc": 0, "df": 17, "nv": 0}
    assert plan_balance({"a": 3, "b": 1}, "ratio:0.5") == {"a": 0, "b": 1}  # round(1.5) = 2


def test_plan_counts_none_and_cap():
    assert plan_balance(COUNTS, "counts:df=50, akiec=7") == {
        "akiec": 7,
        "bcc": 0,
        "df": 50,
        "nv": 0,
    }
    assert plan_balance(COUNTS, "none") == dict.fromkeys(COUNTS, 0)
    assert plan_balance(COUNTS, "majority", max_per_class=180) == {
        "akiec": 180,
        "bcc": 175,
        "df": 180,
        "nv": 0,
    }


@pytest.mark.parametrize(
    "spec,match",
    [
        ("counts:mel=5", "unknown class 'mel'"),
        ("counts:df=x", "class=<integer>"),
        ("counts:df=-1", "negative"),
        ("ratio:abc", "must be a number"),
        ("equal", "unknown"),
    ],
)
def test_plan_errors_name_the_problem(spec, match):
    with pytest.raises(ConfigError, match=match):
        plan_balance(COUNTS, spec)


def test_seeds_are_stable_and_distinct():
    assert image_seed(0, "mel", 3) == image_seed(0, "mel", 3)
    seeds = {image_seed(s, c, i) for s in (0, 1) for c in ("mel", "df") for i in range(50)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**63 for s in seeds)
    assert parse_synthetic_id(synthetic_id("my_class", 12)) == ("my_class", 12)
    assert synthetic_id("mel", 5) == "syn_mel_000005"


def test_read_manifest_drops_a_half_written_row(tmp_path):
    path = tmp_path / "manifest.csv"
    rows = pd.DataFrame(
        [dict.fromkeys(SYNTH_COLUMNS, 1) | {"image_id": f"syn_a_{i}"} for i in range(3)]
    )
    append_rows(path, rows.iloc[:2])
    append_rows(path, rows.iloc[2:])
    text = path.read_text()
    assert text.count("\n") == 4  # header + 3 rows
    path.write_text(text[:-7])  # killed while writing the last row
    got = read_manifest(path)
    assert got["image_id"].tolist() == ["syn_a_0", "syn_a_1"]
    assert path.read_text().endswith("\n")
    assert read_manifest(tmp_path / "missing.csv").columns.tolist() == SYNTH_COLUMNS


def test_precision_recall_hand_made():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(50, 4, generator=g)
    assert precision_recall(real, real.clone()) == {"precision": 1.0, "recall": 1.0}
    far = real + 100.0
    assert precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    # Half the fakes on the real manifold, half far away.
    mixed = torch.cat([real[:25], far[:25]])
    assert precision_recall(real, mixed)["precision"] == pytest.approx(0.5)


def test_nearest_matches_sklearn():
    g = torch.Generator().manual_seed(1)
    q, r = torch.randn(30, 5, generator=g), torch.randn(40, 5, generator=g)
    idx, dist = nearest(q, r, chunk=7)
    nn_ = NearestNeighbors(n_neighbors=1).fit(r.numpy())
    d_ref, i_ref = nn_.kneighbors(q.numpy())
    assert idx.tolist() == i_ref[:, 0].tolist()
    np.testing.assert_allclose(dist.numpy(), d_ref[:, 0], rtol=1e-5, atol=1e-5)


def test_other_lesion_distances_skip_the_same_lesion():
    # Lesion A has two identical images; lesion B is 3 away, lesion C 5 away from A.
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    d = other_lesion_nn_distances(x, np.array(["A", "A", "B", "C"]))
    assert d.tolist() == pytest.approx([3.0, 3.0, 3.0, 5.0])


def test_fid_kid_identical_sets_near_zero_and_shift_detected():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    assert abs(fid_kid(real, real.clone())["fid"]) < 1e-6
    # FID of a pure mean shift = squared shift norm = 8 * 2^2.
    assert fid_kid(real, real + 2.0)["fid"] == pytest.approx(32.0, rel=1e-6)
    # KID: unbiased, so ~0 for a fresh draw of the same distribution, large for a shift.
    fresh = torch.randn(200, 8, generator=g)
    same_kid = fid_kid(real, fresh)["kid"]
    assert abs(same_kid) < 0.1
    assert fid_kid(real, fresh + 1.0)["kid"] > 50 * abs(same_kid)


def test_precision_recall_subsampling_keeps_the_answer():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(300, 4, generator=g)
    far = real + 100.0
    fake = torch.cat([real[:150], far[:150]])
    got = precision_recall(real, fake, max_points=100, seed=1)
    assert 0.35 < got["precision"] < 0.65  # about half of a random 100 lie on the manifold
    assert got["recall"] > 0.8  # the fakes include half the reals


def test_image_grid_pads_rows_and_fills_short_ones_white():
    import numpy as np

    from dermae.synth.common import image_grid

    full = np.zeros((3, 4, 5, 3), np.uint8)
    short = np.full((2, 4, 5, 3), 7, np.uint8)
    grid = image_grid([full, short], pad=2)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    assert (grid[2:6, 2:7] == 0).all() and (grid[8:12, 9:14] == 7).all()
    assert (grid[8:12, 16:21] == 255).all()  # the missing third cell of the short row
    assert (grid[:2] == 255).all()  # padding

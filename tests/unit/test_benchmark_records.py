"""The scripts that turn a finished run into BENCHMARKS numbers copy values, never guess them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

TIME_LOG = """\
dermae: 2 torch thread(s) (DERMAE_THREADS)
[dermae] report: finished in 1 s
[dermae] pipeline finished in 6523 s; see runs/cpu-full
\tCommand being timed: ".venv/bin/dermae run -c configs/cpu-full.yaml"
\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:48:52
\tMaximum resident set size (kbytes): 3301056
\tExit status: 0
"""


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_clock_seconds() -> None:
    record = _load("run_record")
    assert record.clock_seconds("1:48:52") == 6532
    assert record.clock_seconds("48:52.5") == pytest.approx(2932.5)


def test_time_log_values() -> None:
    timing = _load("run_record").parse_time_log(TIME_LOG)
    assert timing == {
        "wall_s": 6532,
        "pipeline_s": 6523,
        "max_rss_kb": 3301056,
        "exit_status": 0,
        "torch_threads": "2 (DERMAE_THREADS)",
    }


def test_automatic_thread_reason_keeps_its_inner_parentheses() -> None:
    log = TIME_LOG.replace("(DERMAE_THREADS)", "(auto: 2 usable CPUs, ~0 busy, 1 process(es))")
    timing = _load("run_record").parse_time_log(log)
    assert timing["torch_threads"] == "2 (auto: 2 usable CPUs, ~0 busy, 1 process(es))"


def test_shell_time_gives_the_wall_time_only() -> None:
    log = (
        "[dermae] pipeline finished in 1401 s; see runs/demo\n\nreal\t25m9.545s\nuser\t44m42.217s\n"
    )
    assert _load("run_record").parse_time_log(log) == {
        "wall_s": 1510,
        "pipeline_s": 1401,
        "torch_threads": None,
    }


def test_log_without_time_output_is_refused() -> None:
    with pytest.raises(ValueError, match="/usr/bin/time -v"):
        _load("run_record").parse_time_log("[dermae] pipeline finished in 5 s\n")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "(AVX-512, bf16 by AMX)"),
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", "(AVX-512, bf16 by AVX-512 BF16, no AMX)"),
        ("fpu avx2 fma", "(AVX2, no bf16 instructions)"),
    ],
)
def test_machine_names_the_bf16_path(flags: str, expected: str) -> None:
    cpuinfo = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n"
    meminfo = "MemTotal:       24683716 kB\nMemFree: 1 kB\n"
    text = _load("run_record").describe_machine(cpuinfo, meminfo, 2)
    assert text == f"2 cores AMD EPYC {expected}, 24 GB"


def test_record_reads_marks_and_generator(tmp_path: Path) -> None:
    record = _load("run_record")
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "synth" / "vae").mkdir(parents=True)
    for name, seconds in (("baseline", 430.14), ("prepare", 9.21)):
        (run / "stages" / f"{name}.json").write_text(json.dumps({"seconds": seconds}))
    (run / "synth" / "vae" / "metrics.json").write_text(
        json.dumps({"psnr": 27.1, "ssim": 0.78, "latent_shape": [4, 8, 8], "steps": 800})
    )
    quality = {
        "filter": {"accepted": 3, "total": 10},
        "per_class": {
            "mel": {
                "class_fidelity": 0.3,
                "real_val_fidelity": 0.6,
                "near_copies_feature": 1,
                "near_copies_pixel": 0,
            }
        },
    }
    (run / "synth" / "synth_quality.json").write_text(json.dumps(quality))
    log = tmp_path / "run.log"
    log.write_text(TIME_LOG)
    out = record.build_record(run, log, "cmd", "machine", "up 1", "up 2", "abc1234")
    assert list(out["stages_s"]) == ["prepare", "baseline"]  # pipeline order, not file order
    assert out["stages_s"] == {"prepare": 9.2, "baseline": 430.1}
    assert out["vae_val"] == {"psnr": 27.1, "ssim": 0.78, "latent_shape": [4, 8, 8]}
    assert out["synthetic_filter"] == {"accepted": 3, "total": 10}
    assert out["class_fidelity"] == {"mel": 0.3}
    assert out["judge_recall_on_real_val"] == {"mel": 0.6}
    assert out["near_copies_feature"] == {"mel": 1}
    assert (out["wall_s"], out["commit"], out["uptime_after"]) == (6532, "abc1234", "up 2")


def test_record_names_stages_lent_by_symlink(tmp_path: Path) -> None:
    record = _load("run_record")
    lender, run = tmp_path / "lender", tmp_path / "run"
    (lender / "synth" / "vae").mkdir(parents=True)
    (run / "stages").mkdir(parents=True)
    (run / "student").mkdir()
    (run / "synth").symlink_to(lender / "synth")
    marks = {"vae": "synth/vae", "distill": "student", "prepare": None}
    for name, inside in marks.items():
        (run / "stages" / f"{name}.json").write_text(
            json.dumps({"seconds": 1.0, "output_in_run": inside})
        )
    assert record.lent_stages(run) == {"vae": str(lender / "synth")}
    log = tmp_path / "run.log"
    log.write_text(TIME_LOG)
    out = record.build_record(run, log, "cmd", "machine")
    assert out["stages_lent"] == {"vae": str(lender / "synth")}
    assert set(out["stages_s"]) == {"prepare", "vae", "distill"}  # seconds kept, lent marked


def test_ablation_table_copies_values() -> None:
    ablation = _load("ablation_table")
    ci = {"balanced_accuracy": [0.55, 0.65], "malignant_auroc": [0.8, 0.9]}
    summary = {
        "reference": "b_simple_fix",
        "results": {
            "b_simple_fix": {
                "scalars": {"balanced_accuracy": 0.6, "malignant_auroc": 0.85},
                "ci95": ci,
            },
            "d_dermae": {
                "scalars": {"balanced_accuracy": 0.65, "malignant_auroc": 0.86},
                "ci95": ci,
            },
        },
        "paired_bootstrap": {
            "d_dermae - b_simple_fix": {
                "balanced_accuracy": {"diff": 0.05, "ci": [0.01, 0.09]},
                "malignant_auroc": {"diff": -0.004, "ci": [-0.02, 0.012]},
            }
        },
    }
    lines = ablation.table(summary).splitlines()
    assert len(lines) == 4  # header, rule, one row per model
    reference_row, dermae_row = lines[2], lines[3]
    assert "0.600 (0.550–0.650)" in reference_row and reference_row.count("—") == 3
    assert "0.650 (0.550–0.650)" in dermae_row
    assert "+0.050 (+0.010 to +0.090)" in dermae_row
    assert "-0.004 (-0.020 to +0.012)" in dermae_row
    assert dermae_row.endswith("| — |")  # no sensitivity comparison recorded


def _probe(seed: int, d_best: float, d_last: float) -> dict:
    entry = {"diff": 0.0, "ci": [-0.01, 0.01]}
    return {
        "seeds": {"b": seed, "d": seed},
        "best_by_validation": {"b": {"step": 330}, "d": {"step": 220}},
        "test": {
            "b_best": {"balanced_accuracy": 0.5},
            "b_last": {"balanced_accuracy": 0.5},
            "d_best": {"balanced_accuracy": 0.5 + d_best},
            "d_last": {"balanced_accuracy": 0.5 + d_last},
        },
        "d_minus_b": {
            rule: {
                "balanced_accuracy": {"diff": diff, "ci": [diff - 0.02, diff + 0.02]},
                "malignant_auroc": entry,
                "macro_auroc": entry,
            }
            for rule, diff in (("best", d_best), ("last", d_last))
        },
    }


def test_selection_table_rows_and_seed_means() -> None:
    table = _load("selection_table")
    summaries = [_probe(0, -0.05, 0.0), _probe(1, 0.03, 0.02)]
    lines = table.rows(summaries)
    assert lines[2].startswith("| 0 | best | 330 | 220 | 0.500 | 0.450 | -0.050 (-0.070 to -0.030)")
    assert lines[3].startswith("| 0 | last | last | last | 0.500 | 0.500 | +0.000")
    best, last = table.means(summaries)
    assert "(d) − (b) -0.010 ± 0.057" in best  # mean of -0.05, +0.03; SD 0.0566
    assert "(d) − (b) +0.010 ± 0.014" in last


def test_teacher_ensemble_probe_averages_log_probabilities() -> None:
    from types import SimpleNamespace

    import numpy as np

    probe = _load("teacher_ensemble_probe")
    data = SimpleNamespace(class_names=["nv", "mel"], malignant_index=[1])
    targets = np.array([0, 1, 0, 1])
    # Member a is right on images 0-1 and 3; member b on 1-3. Their geometric mean is right on
    # all four (image 0: a is sure, b barely wrong; image 2: the reverse).
    a = np.log(np.array([[0.95, 0.05], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]]))
    b = np.log(np.array([[0.45, 0.55], [0.3, 0.7], [0.9, 0.1], [0.2, 0.8]]))
    assert probe.scores([a], targets, data)["balanced_accuracy"] == 0.75
    both = probe.scores([a, b], targets, data)
    assert both["balanced_accuracy"] == 1.0
    assert both["malignant_auroc"] == 1.0


def test_paired_predictions_pairs_against_any_reference(tmp_path: Path) -> None:
    import numpy as np

    from dermae.data.prepared import load_prepared
    from tests.helpers.tiny_data import make_prepared

    make_prepared(tmp_path, n_per_class=20, size=8)
    rows = load_prepared(tmp_path).rows("test").reset_index(drop=True)
    names = load_prepared(tmp_path).class_names
    targets = rows["diagnosis"].map({c: i for i, c in enumerate(names)}).to_numpy()
    right = np.eye(len(names))[targets] * 0.9 + 0.1 / len(names)
    always_first = np.tile(np.eye(len(names))[0] * 0.9 + 0.1 / len(names), (len(rows), 1))

    def write(name: str, probs: np.ndarray) -> Path:
        frame = rows[["image_id", "group_id"]].assign(target=targets)
        for i, c in enumerate(names):
            frame[f"p_{c}"] = probs[:, i]
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
        return tmp_path / f"{name}.csv"

    script = _load("paired_predictions")
    out = tmp_path / "paired.json"
    script.main(
        [
            str(tmp_path),
            "--reference",
            f"first={write('first', always_first)}",
            "--model",
            f"right={write('right', right)}",
            "--model",
            f"same={write('same', always_first)}",
            "--resamples",
            "50",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    ba = result["paired"]["right - first"]["balanced_accuracy"]
    assert ba["diff"] == pytest.approx(1 - 1 / len(names))  # 1.0 against 1/K
    assert result["paired"]["same - first"]["balanced_accuracy"]["diff"] == 0.0
    with pytest.raises(SystemExit):
        script.main([str(tmp_path), "--reference", "no-equals-sign", "--model", "a=b"])


def test_seed_study_scores_folders_and_chooses_on_validation(tmp_path: Path) -> None:
    import torch

    from dermae.classify.model import build_classifier, classifier_config, save_classifier
    from dermae.data.prepared import load_prepared
    from tests.helpers.tiny_data import make_prepared

    make_prepared(tmp_path, n_per_class=20, size=8)
    prepared = load_prepared(tmp_path)
    malignant = [prepared.class_names[i] for i in prepared.malignant_index]

    def model(name: str, seed: int) -> str:
        torch.manual_seed(seed)
        config = classifier_config("test_efficientnet", prepared.class_names, malignant, 8)
        return str(save_classifier(tmp_path / name, build_classifier(config), {}))

    script = _load("seed_study")
    out = tmp_path / "study.json"
    recipe_b, recipe_d = f"b={model('b0', 0)},{model('b1', 1)}", f"d={model('d0', 2)}"
    recipe_e = f"e={model('e0', 4)},{model('e1', 5)}"
    script.main(
        [str(tmp_path), "--reference", "b", "--recipe", recipe_b, "--recipe", recipe_d]
        + ["--recipe", recipe_e, "--bar", f"t={model('t', 3)}"]
        + ["--resamples", "20", "--out", str(out)]
    )
    result = json.loads(out.read_text())

    def mean_val(name: str) -> float:
        values = [m["val"]["balanced_accuracy"] for m in result["models"][name]]
        return sum(values) / len(values)

    # The candidate with the higher mean validation score; never the reference or a bar.
    assert mean_val("d") != mean_val("e")
    expected = "d" if mean_val("d") > mean_val("e") else "e"
    assert result["chosen_on_validation"] == expected
    assert "t - b" in result["paired_test"] and "e - b" in result["paired_test"]
    scores = [m["test"]["balanced_accuracy"] for m in result["models"]["b"]]
    assert result["summary"]["b"]["test"]["balanced_accuracy"]["mean"] == pytest.approx(
        sum(scores) / 2
    )
    d_test = result["models"]["d"][0]["test"]["balanced_accuracy"]
    diff = result["paired_test"]["d - b"]["balanced_accuracy"]["diff"]
    assert diff == pytest.approx(d_test - sum(scores) / 2)
    assert result["decision"] == "argmax"
    assert all(not any(m["decision_shift"]) for m in result["models"]["b"])
    with pytest.raises(SystemExit):
        script.main([str(tmp_path), "--reference", "x", "--recipe", recipe_d])

    # A rule fitted on validation: the shift is recorded, and a recipe's validation score can
    # only rise (the fit starts at argmax and keeps a change only when it improves).
    shifted = tmp_path / "shifted.json"
    script.main(
        [str(tmp_path), "--reference", "b", "--recipe", recipe_b, "--recipe", recipe_d]
        + ["--decision", "bias", "--resamples", "20", "--out", str(shifted)]
    )
    fitted = json.loads(shifted.read_text())
    assert fitted["decision"] == "bias"
    for name in ("b", "d"):
        for before, after in zip(result["models"][name], fitted["models"][name], strict=True):
            assert len(after["decision_shift"]) == len(prepared.class_names)
            assert after["val"]["balanced_accuracy"] >= before["val"]["balanced_accuracy"]


def test_generator_probe_second_judge_scores_what_the_filter_keeps() -> None:
    import numpy as np

    probe = _load("generator_weights_probe")
    first = np.array([True, True, False, False])  # the filter keeps images 0 and 1
    second = np.array([True, False, True, True])
    nothing = np.zeros(2, dtype=bool)
    out = probe.second_opinion({"mel": [first, second], "vasc": [nothing, ~nothing]})
    assert out["accepted"] == {"mel": 0.5, "vasc": 0.0}
    assert out["fidelity"] == {"mel": 0.75, "vasc": 1.0}
    assert out["of_accepted"] == {"mel": 0.5, "vasc": None}  # nothing kept: no score


def test_kd_gain_plot_copies_student_and_teacher_differences(tmp_path: Path) -> None:
    script = _load("kd_gain_plot")

    def entry(diff: float) -> dict:
        return {"balanced_accuracy": {"diff": diff, "ci_lesion_and_seed": [diff - 0.1, diff + 0.1]}}

    (tmp_path / "s.json").write_text(
        json.dumps({"reference": "b", "paired_test": {"d - b": entry(0.02)}})
    )
    (tmp_path / "t.json").write_text(
        json.dumps({"reference": "b", "paired_test": {"teacher - b": entry(0.07)}})
    )
    study = script.Study("99", "toy", "s.json", "d", "t.json", "teacher", 900)
    point = script.point(study, tmp_path)
    assert point["teacher_minus_b"] == 0.07 and point["student_minus_b"] == 0.02
    assert point["student_ci"] == [0.02 - 0.1, 0.02 + 0.1]
    script.plot([point], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(KeyError, match="teacher - b"):
        script.point(script.Study("99", "toy", "s.json", "teacher", "t.json", "x", 900), tmp_path)
    # Every committed study the script names is readable.
    assert len([script.point(s) for s in script.STUDIES]) == len(script.STUDIES)


def test_ablation_components_reads_seed_zero_then_every_extra_seed(tmp_path: Path) -> None:
    script = _load("ablation_components")
    ablate = tmp_path / "ablate"
    for folder, value in [
        ("eval/b_simple_fix", 0),
        ("eval_seeds/b_simple_fix_seed_plus_1", 1),
        ("eval_seeds/b_simple_fix_seed_plus_2", 2),
        ("eval_seeds/b_simple_fix_seed_plus_4", 4),  # after a gap: not a seed of this list
        ("eval/d_dermae", 10),
    ]:
        (ablate / folder).mkdir(parents=True)
        (ablate / folder / "predictions.csv").write_text(f"image_id,p\nx,{value}\n")
    frames = script.variant_frames(ablate, ["b_simple_fix", "d_dermae", "e_no_mae"])
    assert list(frames) == ["b_simple_fix", "d_dermae"]  # (e) was not scored: left out
    assert [f["p"][0] for f in frames["b_simple_fix"]] == [0, 1, 2]
    assert [f["p"][0] for f in frames["d_dermae"]] == [10]


def test_kd_fit_scores_hand_made_probabilities() -> None:
    script = _load("kd_fit")
    teacher = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    same = script.follow_scores(teacher, teacher)
    assert same["kl_from_teacher"] == pytest.approx(0.0, abs=1e-9)
    assert same["top1_agreement"] == 1.0
    student = np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4]])  # flips the third image
    other = script.follow_scores(teacher, student)
    third = 0.2 * np.log(0.2 / 0.6) + 0.8 * np.log(0.8 / 0.4)
    assert other["kl_from_teacher"] == pytest.approx(third / 3)
    assert other["top1_agreement"] == pytest.approx(2 / 3)
    scores = script.label_scores(student, np.array([1, 0, 1]), ["a", "b"], [1])
    assert scores["sensitivity"] == {"a": 1.0, "b": 0.0}  # argmax ties go to the first class
    assert scores["balanced_accuracy"] == pytest.approx(0.5)


def test_kd_fit_gives_each_model_the_same_rows_at_its_own_size(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from dermae.data.prepared import load_prepared
    from tests.helpers.tiny_data import make_prepared

    script = _load("kd_fit")
    make_prepared(tmp_path, n_per_class=3, size=16, source_size=40)
    prepared = load_prepared(tmp_path)
    at_16 = script.split_images(prepared, SimpleNamespace(config={"image_size": 16}), "train")
    at_32 = script.split_images(prepared, SimpleNamespace(config={"image_size": 32}), "train")
    assert len(at_16) == len(at_32) > 0
    assert at_16[0]["image"].shape[-1] == 16 and at_32[0]["image"].shape[-1] == 32
    assert [at_16[i]["label"] for i in range(len(at_16))] == [
        at_32[i]["label"] for i in range(len(at_32))
    ]


def test_inference_benchmark_scores_a_checkpoint_at_its_own_size(tmp_path: Path) -> None:
    from tests.helpers.tiny_data import make_prepared

    script = _load("bench_inference")
    make_prepared(tmp_path, n_per_class=3, size=16, source_size=40)
    at_data = script.load_split_images(tmp_path)
    at_32 = script.load_split_images(tmp_path, 32)
    for split in ("train", "val", "test"):
        assert at_data[split][0].shape[-2:] == (16, 16)
        assert at_32[split][0].shape[-2:] == (32, 32)
        assert len(at_32[split][0]) == len(at_data[split][0])
        np.testing.assert_array_equal(at_32[split][1], at_data[split][1])
    # Same images, not just same shapes: 32 px pooled 2x2 is the 16-px cache, to within
    # resampling (about 0.005 here, against about 0.06 between different images).
    small, large = at_data["train"][0], at_32["train"][0]
    pooled = large.reshape(*large.shape[:2], 16, 2, 16, 2).mean(axis=(3, 5))
    assert np.abs(pooled - small).mean() < 0.2 * np.abs(small - np.roll(small, 1, axis=0)).mean()


def test_inference_table_states_the_int8_rule_and_both_agreements() -> None:
    from dermae.deploy.quantize import acceptance_rule

    script = _load("bench_inference")
    saved = json.loads((BENCHMARKS / "results/phone_student_128px.json").read_text())
    result = {**saved["results"][0], "int8_acceptance": acceptance_rule(0.005, 0.95, True)}
    text = script.markdown([result], saved["meta"])
    assert "Accepted: validation balanced accuracy drop <= 0.005 and top-1 agreement" in text
    chosen = next(line for line in text.splitlines() if "qoperator_pct (chosen)" in line)
    variant = result["int8_variants"]["qoperator_pct"]
    val_share = f"{100 * variant['val_top1_agreement_vs_fp32']:.1f}%"
    test_share = f"{100 * variant['test_top1_agreement_vs_fp32']:.1f}%"
    assert f"| {val_share} | {test_share} |" in chosen


def test_validation_curves_find_the_best_step_and_compare_the_last_windows(
    tmp_path: Path,
) -> None:
    script = _load("validation_curves")
    falling = tmp_path / "b" / "model"
    falling.mkdir(parents=True)
    (falling / "config.json").write_text(json.dumps({"loss": "balanced_sampler"}))
    train = tmp_path / "b" / "balanced_sampler" / "train"
    train.mkdir(parents=True)
    scores = {100: 0.5, 200: 0.7, 300: 0.6, 400: 0.55}  # best at 200, then falling
    rows = [{"step": s, "loss": 1.0} for s in range(10, 401, 10)]
    rows += [{"step": s, "val_balanced_accuracy": v} for s, v in scores.items()]
    (train / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rising = tmp_path / "d" / "train"
    rising.mkdir(parents=True)
    (rising / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "val_balanced_accuracy": s / 1000}) for s in (100, 200))
    )
    out = tmp_path / "curves.json"
    result = script.main(
        ["--recipe", f"b={falling}", "--recipe", f"d={rising.parent}", "--window", "200"]
        + ["--out", str(out)]
    )
    b = result["recipes"]["b"]["models"][0]
    assert (b["best_step"], b["best"], b["last_step"]) == (200, 0.7, 400)
    assert b["late_mean"] == pytest.approx((0.6 + 0.55) / 2)
    assert b["early_mean"] == pytest.approx((0.5 + 0.7) / 2)
    assert b["still_rising"] is False
    d = result["recipes"]["d"]["models"][0]
    assert d["early_mean"] is None and d["still_rising"] is False  # no window before the last
    assert json.loads(out.read_text())["recipes"]["b"]["still_rising"] == 0
    assert Path(result["plot"]).stat().st_size > 0
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        script.metrics_log(tmp_path / "nowhere")

"""Model card (MODEL_CARD.md + model_card.json) for an export folder."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from dermae.data.classes import CLASS_DESCRIPTIONS

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"

HAM10000_CITATION = (
    "Tschandl P., Rosendahl C., Kittler H. The HAM10000 dataset, a large collection of "
    "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 "
    "(2018). doi:10.1038/sdata.2018.161"
)
NOTICE = (
    "Research tool only. Not a medical device and not a diagnosis: do not use its output to "
    "decide on the care of a patient. Any concerning skin lesion should be seen by a clinician."
)
LIMITATIONS = [
    "Trained on dermoscopic images (HAM10000: Vienna and Queensland, mostly light skin types); "
    "ordinary phone photos, other skin types, body sites, cameras and populations are out of "
    "distribution and its accuracy there is unknown.",
    "Only the classes listed are known to the model; any other lesion (e.g. squamous cell "
    "carcinoma, non-pigmented lesions) is forced into one of them.",
    "Low working resolution (see image_size) loses fine dermoscopic structure.",
    "Probabilities may be miscalibrated; the operating threshold was chosen on the validation "
    "split for a target specificity and does not transfer to populations with another "
    "prevalence of malignancy.",
    "Minority-class training images may include synthetic (diffusion-generated) lesions; "
    "test metrics are on real held-out lesions only.",
    "No prospective or clinical validation has been done.",
]


def _format_metric(value: Any) -> str | None:
    """0.8123 | {"value": v, "ci": [lo, hi]} | {"mean"/"point", "lo"/"ci_low", ...} -> text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    if not isinstance(value, dict):
        return None
    if "value" in value and value["value"] is None:
        return "n/a"
    point = next((value[k] for k in ("value", "point", "mean", "estimate") if k in value), None)
    lo = next((value[k] for k in ("lo", "low", "ci_low", "lower") if k in value), None)
    hi = next((value[k] for k in ("hi", "high", "ci_high", "upper") if k in value), None)
    if "ci" in value and isinstance(value["ci"], list | tuple) and len(value["ci"]) == 2:
        lo, hi = value["ci"]
    if not isinstance(point, int | float):
        return None
    if isinstance(lo, int | float) and isinstance(hi, int | float):
        return f"{point:.4g} (95% CI {lo:.4g}–{hi:.4g})"
    return f"{point:.4g}"


def _metric_rows(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in metrics.items():
        text = _format_metric(value)
        if text is not None:
            rows.append((f"{prefix}{key}", text))
        elif isinstance(value, dict):
            rows.extend(_metric_rows(value, f"{prefix}{key}."))
    return rows


def metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline of a dermae metrics.json (scalars with 95 % CIs), or the dict as given."""
    if "scalars" not in metrics:
        return metrics
    ci = metrics.get("ci95") or {}
    return {
        "split": metrics.get("split"),
        "n_images": metrics.get("n_images"),
        "n_lesions": metrics.get("n_lesions"),
        "ci": f"95% bootstrap over {metrics.get('bootstrap', {}).get('unit', 'images')}",
        "values": {
            key: {"value": value, "ci": list(ci[key]) if ci.get(key) else None}
            for key, value in metrics["scalars"].items()
        },
    }


def build_card(
    spec: dict[str, Any],
    export_report: dict[str, Any],
    quant_report: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    metrics_source: str | None = None,
) -> dict[str, Any]:
    return {
        "name": f"dermae {spec.get('arch')} skin-lesion classifier",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "notice": NOTICE,
        "intended_use": {
            "primary": "research and teaching on dermoscopic images of pigmented skin lesions",
            "users": "researchers and engineers; not patients, not unsupervised clinical use",
            "out_of_scope": [
                "diagnosis, triage or screening of real patients",
                "non-dermoscopic photos, non-skin images",
                "commercial use (training data licence is non-commercial)",
            ],
        },
        "model": {
            "arch": spec.get("arch"),
            "parameters": export_report.get("parameters"),
            "input": spec["input"],
            "resize": spec["resize"],
            "normalization": spec["normalization"],
            "output": spec["output"],
            "files": export_report.get("files"),
        },
        "classes": [
            {
                "name": c,
                "description": CLASS_DESCRIPTIONS.get(c, c),
                "malignant": c in spec["malignant_classes"],
            }
            for c in spec["class_names"]
        ],
        "malignant_risk": "sum of the probabilities of the malignant classes",
        "threshold": spec["threshold"],
        "training_data": {
            "dataset": "HAM10000",
            "citation": HAM10000_CITATION,
            "license": "CC BY-NC 4.0 (attribution, non-commercial)",
            "split": "train / validation / test split by lesion_id; the test split never "
            "chose the threshold, the int8 calibration or any model",
        },
        "metrics": None if metrics is None else metrics_summary(metrics),
        "metrics_source": metrics_source,
        "export": {
            "onnx_parity_max_abs_diff": export_report.get("parity", {}).get("max_abs_diff"),
            "opset": export_report.get("opset"),
        },
        "quantization": _quant_summary(quant_report),
        "limitations": LIMITATIONS,
    }


def _quant_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if not report or report.get("chosen") is None:
        return None
    chosen = report["variants"][report["chosen"]]
    return {
        "variant": report["chosen"],
        "settings": chosen.get("settings"),
        "recommended_model": report.get("recommended"),
        "speedup_vs_fp32_b1": report.get("speedup_vs_fp32_b1"),
        "test_delta_vs_fp32": chosen.get("test", {}).get("delta_vs_fp32"),
        "accepted": chosen.get("accepted"),
        "acceptance_rule": report.get("selection", {}).get("acceptable"),
        "val_top1_agreement_vs_fp32": chosen.get("val", {}).get("top1_agreement_vs_fp32"),
        "test_top1_agreement_vs_fp32": chosen.get("test", {}).get("top1_agreement_vs_fp32"),
    }


def render_markdown(card: dict[str, Any]) -> str:
    model, threshold = card["model"], card["threshold"]
    size = model["input"]["shape"][-1]
    lines = [
        f"# {card['name']}",
        "",
        f"> **{card['notice']}**",
        "",
        "## Intended use",
        f"- Primary use: {card['intended_use']['primary']}.",
        f"- Users: {card['intended_use']['users']}.",
        "- Out of scope: " + "; ".join(card["intended_use"]["out_of_scope"]) + ".",
        "",
        "## Model",
        f"- Architecture: `{model['arch']}` (timm), {model.get('parameters') or 0:,} parameters.",
        f"- Input `{model['input']['name']}`: float32 [N, 3, {size}, {size}], RGB, values in "
        "[0, 1] (uint8 pixels / 255). Mean/std normalisation "
        f"(mean {model['normalization']['mean']}, std {model['normalization']['std']}) "
        "happens inside the model: do not normalise again.",
        f"- Resize: {model['resize']['description']} ({model['resize']['interpolation']}).",
        f"- Output `{model['output']['name']}`: class probabilities (softmax inside the model).",
        f"- Malignant risk = {card['malignant_risk']}; flagged when risk >= "
        f"{threshold['malignant_risk']:.4f} (threshold source: {threshold['source']}"
        + (
            f", target specificity {threshold['specificity']}"
            if threshold.get("specificity")
            else ""
        )
        + ").",
        "",
        "| class | description | malignant |",
        "|---|---|---|",
        *[
            f"| {c['name']} | {c['description']} | {'yes' if c['malignant'] else 'no'} |"
            for c in card["classes"]
        ],
        "",
        "## Training data",
        f"- {card['training_data']['dataset']}: {card['training_data']['citation']}",
        f"- Licence: {card['training_data']['license']}.",
        f"- {card['training_data']['split']}.",
        "",
        "## Metrics",
    ]
    if card.get("metrics"):
        m = card["metrics"]
        where = (
            f"{m['split']} split, {m['n_images']} images of {m['n_lesions']} lesions; {m['ci']}"
            if "values" in m
            else "held-out test split"
        )
        lines += [
            f"From `{card.get('metrics_source') or 'metrics.json'}` ({where}):",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in _metric_rows(m.get("values", m))],
        ]
    else:
        lines.append("No evaluation metrics were supplied with this export.")
    lines += ["", "## Export"]
    parity = card["export"]["onnx_parity_max_abs_diff"]
    if parity is not None:
        lines.append(f"- ONNX vs PyTorch max abs probability difference: {parity:.2e}.")
    quant = card.get("quantization")
    if quant:
        lines.append(
            f"- int8 variant `{quant['variant']}`, {quant['speedup_vs_fp32_b1']:.2f}x vs fp32 at "
            f"batch 1 on the export machine; recommended model: {quant['recommended_model']}."
        )
        if quant.get("test_delta_vs_fp32"):
            deltas = ", ".join(
                f"{k} {v:+.4f}" for k, v in quant["test_delta_vs_fp32"].items() if v is not None
            )
            lines.append(f"- int8 change vs fp32 on the test split: {deltas}.")
        if quant.get("acceptance_rule"):
            verdict = "meets" if quant.get("accepted") else "does NOT meet"
            lines.append(f"- The int8 model {verdict} the rule: {quant['acceptance_rule']}.")
        shares = [
            f"{100 * quant[key]:.1f} % of {split} images"
            for key, split in (
                ("val_top1_agreement_vs_fp32", "validation"),
                ("test_top1_agreement_vs_fp32", "test"),
            )
            if quant.get(key) is not None
        ]
        if shares:
            lines.append(f"- int8 gives fp32's top class on {' and '.join(shares)}.")
    site = card.get("site_calibration")
    if site:
        target = site["target"]
        lines += [
            "",
            "## Site calibration",
            f"- The threshold above was re-chosen for site **{site['site']}** on "
            f"{site['slice']['n_images']} labelled images ({site['slice']['n_malignant']} "
            f"malignant) of `{site['slice']['path']}`, for {target['kind']} {target['value']}; "
            f"temperature {site.get('temperature') or 'none'}. The HAM10000 threshold is kept "
            "in preprocess.json under threshold.ham10000.",
            f"- On that slice (in-sample): sensitivity {site['on_slice']['sensitivity']:.3f}, "
            f"specificity {site['on_slice']['specificity']:.3f}. Full record: {site['record']}.",
        ]
    lines += ["", "## Limitations", *[f"- {item}" for item in card["limitations"]], ""]
    return "\n".join(lines)


def write_card(out_dir: str | Path, card: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    (out_dir / CARD_JSON).write_text(json.dumps(card, indent=2))
    (out_dir / CARD_MD).write_text(render_markdown(card))

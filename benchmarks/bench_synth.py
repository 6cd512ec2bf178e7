"""Cost of the generator stage: VAE / UNet training steps per second, sampling images per second.

Each case runs in its own subprocess so its peak RSS is its own. Timings on a shared CPU are
noisy: the load average before and after each case is recorded beside it.

    PYTHONPATH=src python benchmarks/bench_synth.py                 # all cases
    PYTHONPATH=src python benchmarks/bench_synth.py --only unet     # a subset
Writes benchmarks/results/synth.json and benchmarks/results/synth.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
IMAGE = 64

# name -> VAE block_out_channels (factor = 2 ** (len - 1))
VAES = {
    "vae_f4_32-64-64": (32, 64, 64),
    "vae_f8_32-64-64-64": (32, 64, 64, 64),
    "vae_f4_16-32-64": (16, 32, 64),
    "vae_f8_16-32-64-64": (16, 32, 64, 64),
}
# name -> (UNet block_out_channels, latent side, attention)
UNETS = {
    "unet_64-128-128_f4": ((64, 128, 128), 16, True),
    "unet_64-128-128_f8": ((64, 128, 128), 8, True),
    "unet_32-64-128_f8": ((32, 64, 128), 8, True),
    "unet_64-128-128_f8_noattn": ((64, 128, 128), 8, False),
}


def case_list(only: str | None) -> list[dict]:
    cases = []
    for name in VAES:
        for mp in ("no", "bf16"):
            cases.append({"kind": "vae_train", "name": name, "mp": mp, "batch": 32})
    for name in UNETS:
        for mp in ("no", "bf16"):
            cases.append({"kind": "unet_train", "name": name, "mp": mp, "batch": 64})
    for name in ("unet_64-128-128_f4", "unet_64-128-128_f8", "unet_32-64-128_f8"):
        for steps in (25, 50):
            for mp in ("no", "bf16"):
                cases.append(
                    {"kind": "sample", "name": name, "mp": mp, "batch": 64, "steps": steps}
                )
    return [c for c in cases if only is None or only in c["kind"] or only in c["name"]]


def _autocast(mp: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mp == "bf16")


def _timed_steps(step, warmup: int, min_steps: int, min_seconds: float) -> tuple[float, int]:
    for _ in range(warmup):
        step()
    start, n = time.perf_counter(), 0
    while n < min_steps or time.perf_counter() - start < min_seconds:
        step()
        n += 1
    return time.perf_counter() - start, n


def run_case(case: dict) -> dict:
    import torch

    from dermae.config import LDMConfig, VAEConfig
    from dermae.synth.ldm import LDMTask, build_noise_scheduler, build_unet
    from dermae.synth.sample import generate, make_sampler
    from dermae.synth.vae import VAETask, build_vae

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    batch = case["batch"]
    result = dict(case, threads=torch.get_num_threads(), load_before=os.getloadavg()[0])
    if case["kind"] == "vae_train":
        vae = build_vae(VAEConfig(block_out_channels=VAES[case["name"]]), IMAGE)
        task = VAETask(vae).train()
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
        images = {"image": torch.rand(batch, 3, IMAGE, IMAGE)}

        def step():
            with _autocast(case["mp"]):
                loss = task(images)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds, n = _timed_steps(step, 2, 4, 10.0)
        result.update(params_m=sum(p.numel() for p in vae.parameters()) / 1e6)
        result.update(steps_per_s=n / seconds, images_per_s=n * batch / seconds)
    else:
        channels, side, attn = UNETS[case["name"]]
        factor = IMAGE // side
        vae_channels = (32, 64, 64) if factor == 4 else (32, 64, 64, 64)
        vae = build_vae(VAEConfig(block_out_channels=vae_channels), IMAGE).eval()
        lcfg = LDMConfig(block_out_channels=channels, attention=attn)
        unet = build_unet(lcfg, 4, side, 7)
        result.update(params_m=sum(p.numel() for p in unet.parameters()) / 1e6)
        if case["kind"] == "unet_train":
            task = LDMTask(unet, vae, build_noise_scheduler(lcfg), latent_augment=True).train()
            opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
            mean = torch.randn(batch, 4, side, side)
            data = {"latent_mean": mean, "latent_std": torch.full_like(mean, 0.1)}
            data["cond"] = torch.arange(batch) % 7

            def step():
                with _autocast(case["mp"]):
                    loss = task(data)["loss"]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            seconds, n = _timed_steps(step, 2, 4, 10.0)
            result.update(steps_per_s=n / seconds, images_per_s=n * batch / seconds)
        else:
            unet.eval()
            sampler = make_sampler("ddim", build_noise_scheduler(lcfg))
            labels = torch.arange(batch) % 7

            def step():
                gens = [torch.Generator().manual_seed(i) for i in range(batch)]
                generate(unet, vae, sampler, labels, 3.0, case["steps"], gens, case["mp"])

            seconds, n = _timed_steps(step, 1, 1, 5.0)
            result.update(images_per_s=n * batch / seconds, s_per_image=seconds / (n * batch))
    result.update(
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        load_after=os.getloadavg()[0],
    )
    return result


def markdown(rows: list[dict]) -> str:
    lines = [
        "| stage | model | precision | batch | steps/s | images/s | peak RSS MB | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        stage = r["kind"] + (f" ({r['steps']} DDIM steps, CFG)" if r["kind"] == "sample" else "")
        steps = f"{r['steps_per_s']:.2f}" if "steps_per_s" in r else "-"
        lines.append(
            f"| {stage} | {r['name']} ({r['params_m']:.1f} M) | {r['mp']} | {r['batch']} | "
            f"{steps} | {r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['load_before']:.1f}/{r['load_after']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=None, help="run cases whose kind or name contains this")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case
    parser.add_argument("--out", default=str(RESULTS / "synth.json"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    rows = []
    for case in case_list(args.only):
        if args.threads:
            case["threads"] = args.threads
        proc = subprocess.run(
            [sys.executable, __file__, "--case", json.dumps(case)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    meta = {"torch": torch.__version__, "cpus": os.cpu_count(), "image_size": IMAGE}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()

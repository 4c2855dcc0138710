#!/usr/bin/env python
"""Benchmark windowed (context-window) generation against the video length (random weights).

For each length N (pixel frames) it runs the windowed DC-CFG loop of ``--long_video context``
(static windows of --context_frames overlapping by --context_overlap, FreeNoise, linear fusion,
per-window conditions kept on the host and moved to the device window by window, as the
pipeline does when it offloads) with a random DiT, then optionally streams the decode through a
random-weight Wan VAE (``--decode``). It reports seconds per step, windows per step, seconds per
window, the latent size, and peak GPU and host memory. Each N runs in its own subprocess so that
its host peak (ru_maxrss) is its own.

    python scripts/bench_long_video.py                        # GPU: 14B DiT, 1024*576, N = 81,161,321
    python scripts/bench_long_video.py --device cpu           # reduced DiT and size (minutes on 2 cores)

With ``--ckpt_dir`` and ``--input_dir`` it instead generates one real video per long-video setting
(``--compare``, e.g. ``context_image=first,context_image=every,mode=chain``) from a prepared input
folder and reports, per window, the seam and identity figures: VBench temporal flickering of the
frame pair at the window's seam against the pairs inside the window, and (with ``--eval_weights``
holding DINO ViT-B/16 and CLIP ViT-B/32, ``steadydancer.eval``) the mean cosine similarity of the
window's frames to the reference image:

    python scripts/bench_long_video.py --ckpt_dir SteadyDancer-14B --input_dir prepared/ --frame_num 321 \
        --size 1024*576 --compare context_image=first,context_image=every,mode=chain --eval_weights eval_weights/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench  # noqa: E402
from steadydancer.errors import InputError  # noqa: E402


def one_length(frames: int, cfg: dict, size: str, window_frames: int, overlap_frames: int, steps: int,
               device: torch.device, dtype: torch.dtype, decode: bool) -> dict:
    """Run the windowed loop for ``frames`` pixel frames; a dict of seconds and GiB."""
    from steadydancer.sampling.conditions import DiTConditions
    from steadydancer.sampling.context_windows import (apply_freenoise, latent_overlap, latent_window,
                                                       sample_dc_cfg_windowed, window_plan)

    f, h, w = bench.latent_shape(frames, size)
    window, overlap = min(latent_window(window_frames), f), latent_overlap(overlap_frames)
    model = bench.build_random_dit(cfg, device, dtype)
    host = torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    plan = window_plan("static", f, window, overlap)
    starts = plan(0)
    shared = dict(text_context=r(1, bench.TEXT_TOKENS, cfg["text_dim"]).to(device, dtype),
                  clip_image=r(1, bench.CLIP_TOKENS, cfg["clip_dim"]).to(device, dtype),
                  clip_pose=r(1, bench.CLIP_TOKENS, cfg["clip_dim"]).to(device, dtype),
                  ref_image=r(1, 36, 1, h, w).to(device, dtype), ref_pose=r(1, 36, 1, h, w).to(device, dtype))
    image_cond = r(1, 20, window, h, w).to(device, dtype)
    pose = {a: (r(1, 16, window, h, w), r(1, 16, window, h, w)) for a in starts}  # on the host, as offloaded

    def conditions(start: int):
        pos, neg = (p.to(device, dtype) for p in pose[start])
        cond = DiTConditions(image_cond=image_cond, pose_latents=pos, **shared)
        return cond, cond, DiTConditions(image_cond=image_cond, pose_latents=neg, **shared)

    noise = apply_freenoise(torch.randn(16, f, h, w, generator=g), window, overlap, seed=0).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.no_grad():
        latent = sample_dc_cfg_windowed(model, noise, conditions, plan, window, solver="unipc", steps=steps,
                                        progress=False, device=device, scheduler_device=host,
                                        st_cond_cfg=-1.0, end_cond_cfg=2.0)  # 3 passes on every step
    bench._sync(device)
    seconds = time.perf_counter() - start
    row = dict(frames=frames, latent=[f, h, w], windows=len(starts), step_s=seconds / steps,
               window_s=seconds / steps / len(starts), latent_mib=latent.numel() * 4 / 2 ** 20)
    if device.type == "cuda":
        row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    if decode:
        del model
        row.update(decode_stream(latent, device))
    row["host_peak_gib"] = bench.host_peak_gib()
    return row


def decode_stream(latent: torch.Tensor, device: torch.device) -> dict:
    """Streamed decode through a random Wan 2.1-shaped VAE into uint8 frames that are dropped."""
    from diffusers import AutoencoderKLWan

    from steadydancer.encoders.vae import WanVAE
    from steadydancer.pipeline.long_video import to_uint8_frames

    vae = WanVAE.__new__(WanVAE)  # random weights, the released architecture (diffusers' defaults)
    vae.model, vae.device, vae.dtype = AutoencoderKLWan().to(device).eval(), device, torch.float32
    vae._set_stats()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, count = time.perf_counter(), 0
    for chunk in vae.decode_stream(latent):
        count += sum(1 for _ in to_uint8_frames(chunk))
    bench._sync(device)
    row = dict(decode_s=time.perf_counter() - start, decoded_frames=count)
    if device.type == "cuda":
        row["decode_gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return row


# -- seam and identity figures of real videos --------------------------------------------------------

def window_spans(frame_num: int, options) -> list[tuple[int, int]]:
    """(first frame, frames) each window owns in the output: context windows own from their start
    (4a) to the next window's start; chain windows from the end of their handover to the next's."""
    from steadydancer.pipeline.long_video import _plan_spans

    spans = _plan_spans(frame_num, options)
    handover = options.chain_overlap if options.mode == "chain" else 0
    owned = [0] + [start + handover for start, _ in spans[1:]] + [frame_num]
    return [(owned[k], owned[k + 1] - owned[k]) for k in range(len(spans))]


def _pair_flicker(a, b) -> float:
    """VBench temporal flickering of one frame pair (uint8 [H, W, 3]): 1 = identical."""
    from steadydancer.eval.metrics import temporal_flickering

    return temporal_flickering(np.stack([a, b]))


def window_figures(frames, reference, spans, dino=None, clip=None, device="cpu") -> list[dict]:
    """Per window: its frames, the flickering of the pair entering it (the seam; None for window 0),
    the mean flickering of the pairs inside it, and with ``dino``/``clip`` the mean cosine
    similarity of its frames to ``reference`` (uint8 [H, W, 3]). ``frames``: uint8 [T, H, W, 3]."""
    import torch.nn.functional as F

    from steadydancer.eval import vbench

    rows, features = [], {}
    for name, model, video_tf, image_tf in (("dino", dino, vbench.dino_frames, vbench.dino_image),
                                            ("clip", clip, vbench.clip_frames, lambda im: vbench.clip_frames(im[None]))):
        if model is not None:
            with torch.no_grad():
                ref = F.normalize(model(image_tf(reference).to(device)).float().cpu(), dim=-1)
                feats = vbench._features(model, video_tf(frames), device)
            features[name] = (feats @ ref.T)[:, 0]
    for k, (start, count) in enumerate(spans):
        inside = [_pair_flicker(frames[i], frames[i + 1]) for i in range(start, start + count - 1)]
        row = dict(window=k, frames=f"{start}-{start + count - 1}",
                   seam_flicker=_pair_flicker(frames[start - 1], frames[start]) if start > 0 else None,
                   inside_flicker=float(np.mean(inside)) if inside else None)
        for name, sims in features.items():
            row[f"{name}_to_reference"] = float(sims[start:start + count].mean())
        rows.append(row)
    return rows


def compare_settings(args: argparse.Namespace) -> list[dict]:
    """One video per ``--compare`` setting from the prepared folder; the per-window figures of each."""
    from dataclasses import replace

    from steadydancer.checks import check_long_video_options, max_area_for
    from steadydancer.pipeline.i2v import DancerPipeline, SamplingOptions
    from steadydancer.pipeline.inputs import PreparedFolder, load_image
    from steadydancer.pipeline.long_video import LongVideoOptions, generate_long_video_file
    from steadydancer.pose.video import read_video

    folder = PreparedFolder(Path(args.input_dir))
    base = LongVideoOptions(context_frames=args.context_frames, context_overlap=args.context_overlap)
    settings = []
    for item in args.compare.split(","):
        key, _, value = item.partition("=")
        if key not in ("mode", "context_image", "chain_overlap", "chain_blend", "color_match", "schedule", "fuse"):
            raise InputError(f"--compare {item}: expected SETTING=VALUE with a LongVideoOptions setting, "
                             f"e.g. context_image=every")
        kind = type(getattr(base, key))
        settings.append((item, replace(base, **{key: kind(value)})))
        check_long_video_options(settings[-1][1])
    max_area = int(args.size) if str(args.size).isdigit() else max_area_for(args.size or "1024*576")
    pipe = DancerPipeline(args.ckpt_dir, device=args.device)
    dino = clip = None
    if args.eval_weights:
        from steadydancer.eval.vit import load_clip_image_encoder, load_dino_vit
        from steadydancer.eval.weights import find_weight

        dino_file, clip_file = find_weight(args.eval_weights, "dino_vitb16"), find_weight(args.eval_weights, "clip_vitb32")
        dino = load_dino_vit(dino_file, args.device) if dino_file else None
        clip = load_clip_image_encoder(clip_file, args.device) if clip_file else None
    out_dir = Path(args.out or "bench_long_video_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name, options in settings:
        save = out_dir / f"{name.replace('=', '-')}.mp4"
        start = time.perf_counter()
        generate_long_video_file(pipe, image=folder.image, cond_pos_folder=folder.positive,
                                 cond_neg_folder=folder.negative, prompt=folder.prompt() or "", save_file=save,
                                 max_area=max_area, frame_num=args.frame_num,
                                 sampling=SamplingOptions(steps=args.steps), options=options, seed=args.seed,
                                 progress=False)
        seconds = time.perf_counter() - start
        frames = np.stack(read_video(save)[0])
        h, w = frames.shape[1:3]
        reference = np.asarray(load_image(folder.image).resize((w, h)))
        for row in window_figures(frames, reference, window_spans(args.frame_num, options), dino, clip, args.device):
            results.append(dict(setting=name, seconds=seconds, **row))
    return results


def format_figures(rows: list[dict]) -> str:
    keys = ["setting", "window", "frames", "seam_flicker", "inside_flicker", "dino_to_reference", "clip_to_reference"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [r.get(k) for k in keys]
        lines.append("| " + " | ".join("n/a" if c is None else f"{c:.4f}" if isinstance(c, float) else str(c)
                                       for c in cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--frames", default="81,161,321", help="comma-separated video lengths, each 4n+1")
    p.add_argument("--size", default=None, help="W*H (default 1024*576; CPU 128*64)")
    p.add_argument("--context_frames", type=int, default=81)
    p.add_argument("--context_overlap", type=int, default=16)
    p.add_argument("--steps", type=int, default=2, help="sampling steps timed (3 guidance passes each)")
    p.add_argument("--decode", action="store_true", help="also time the streamed VAE decode (random VAE)")
    for name in ("dim", "ffn_dim", "num_heads", "num_layers"):
        p.add_argument(f"--{name}", type=int, default=None, help="override the DiT shape")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    real = p.add_argument_group("seam and identity figures of real videos (instead of the timing table)")
    real.add_argument("--ckpt_dir", default=None, help="checkpoint folder: generate real videos")
    real.add_argument("--input_dir", default=None, help="a prepared input folder (steadydancer prepare)")
    real.add_argument("--frame_num", type=int, default=161, help="frames of each video (4n+1)")
    real.add_argument("--compare", default="context_image=first,context_image=every,mode=chain",
                      help="comma-separated SETTING=VALUE, one video each (LongVideoOptions settings)")
    real.add_argument("--eval_weights", default=None, help="folder with the DINO/CLIP weights of steadydancer eval")
    real.add_argument("--seed", type=int, default=0)
    real.add_argument("--out", default=None, help="folder for the videos (default bench_long_video_out)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace):
    from steadydancer.models.memory import DTYPES
    from steadydancer.pipeline.long_video import LongVideoOptions, check_long_video_options

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device here (use --device cpu for the reduced shape)")
    on_cpu = device.type == "cpu"
    cfg = dict(bench.CPU_REDUCED if on_cpu else bench.FULL_14B)
    cfg.update({k: getattr(args, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers") if getattr(args, k)})
    cfg.update(text_dim=4096, clip_dim=1280, text_len=bench.TEXT_LEN, in_dim=36, in_dim_c=16, out_dim=16)
    try:
        lengths = [int(v) for v in args.frames.split(",")]
    except ValueError:
        raise InputError(f"--frames {args.frames}: expected comma-separated 4n+1 numbers") from None
    if any(n < 1 or n % 4 != 1 for n in lengths):
        raise InputError(f"--frames {args.frames}: every length must be 4n+1")
    check_long_video_options(LongVideoOptions(args.context_frames, args.context_overlap))
    size = args.size or ("128*64" if on_cpu else "1024*576")
    bench.latent_shape(5, size)  # checks --size
    return cfg, size, lengths, device, DTYPES["fp32" if on_cpu else "bf16"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ckpt_dir is not None:
        try:
            if args.input_dir is None:
                raise InputError("--ckpt_dir needs --input_dir (a prepared input folder)")
            rows = compare_settings(args)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(format_figures(rows))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    try:
        cfg, size, lengths, device, dtype = resolve(args)
        if args.worker is not None:
            row = one_length(args.worker, cfg, size, args.context_frames, args.context_overlap, args.steps,
                             device, dtype, args.decode)
            print("BENCH_ROW " + json.dumps(row))
            return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    base = list(argv if argv is not None else sys.argv[1:])
    for frames in lengths:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *base, "--worker", str(frames)],
                              capture_output=True, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_ROW ")]
        if proc.returncode or not found:
            rows.append({"frames": frames, "error": ((proc.stderr.strip().splitlines() or ["no output"])[-1])[:200]})
        else:
            rows.append(json.loads(found[-1][len("BENCH_ROW "):]))
    print(f"device: {bench.device_name(device)}; dtype {str(dtype).replace('torch.', '')}; DiT dim {cfg['dim']}, "
          f"layers {cfg['num_layers']}; size {size}; windows of {args.context_frames} frames, overlap "
          f"{args.context_overlap}; {args.steps} steps x 3 passes")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


def format_table(rows: list[dict]) -> str:
    lines = ["| frames | latent | windows | s/step | s/window | GPU peak GiB | decode s | decode GPU peak GiB "
             "| host peak GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['frames']} | failed: {r['error']} | | | | | | | |")
            continue
        na = lambda key, fmt="{:.2f}": fmt.format(r[key]) if key in r else "n/a"  # noqa: E731
        lines.append(f"| {r['frames']} | {'x'.join(map(str, r['latent']))} | {r['windows']} | {r['step_s']:.3f} "
                     f"| {r['window_s']:.3f} | {na('gpu_peak_gib')} | {na('decode_s', '{:.1f}')} "
                     f"| {na('decode_gpu_peak_gib')} | {r['host_peak_gib']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

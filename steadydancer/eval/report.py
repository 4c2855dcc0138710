"""Writing the report: report.json, a Markdown table in the layout of the paper's Table 2, PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..fileio import atomic_path

# (metric, column title, better direction, format, scale); the column groups of the paper's Table 2:
# (a)/(b) TikTok as HumanVid's scripts compute it (LPIPS fed [0, 1] images, per-pair FVD), (c) X-Dance with
# VBench-I2V's dimensions in percent (no ground truth, so no FVD)
TIKTOK_COLUMNS = (("ssim", "SSIM", "↑", "{:.4f}", 1), ("psnr", "PSNR", "↑", "{:.2f}", 1),
                  ("lpips_01", "LPIPS", "↓", "{:.4f}", 1), ("fid", "FID", "↓", "{:.2f}", 1),
                  ("fvd_pair", "FVD", "↓", "{:.2f}", 1))
TIKTOK_EXTRA_COLUMNS = (("lpips", "LPIPS ([-1, 1] inputs)", "↓", "{:.4f}", 1),
                        ("fvd_set", "FVD (set, StyleGAN-V)", "↓", "{:.2f}", 1))
VBENCH_COLUMNS = (("i2v_subject", "I2V Subject", "↑", "{:.2f}", 100),
                  ("i2v_background", "I2V Background", "↑", "{:.2f}", 100),
                  ("subject_consistency", "Subject Consistency", "↑", "{:.2f}", 100),
                  ("background_consistency", "Background Consistency", "↑", "{:.2f}", 100),
                  ("temporal_flickering", "Temporal Flickering", "↑", "{:.2f}", 100),
                  ("motion_smoothness", "Motion Smoothness", "↑", "{:.2f}", 100),
                  ("aesthetic_quality", "Aesthetic Quality", "↑", "{:.2f}", 100),
                  ("imaging_quality", "Imaging Quality", "↑", "{:.2f}", 100))
VBENCH_EXTRA_COLUMNS = (("fvd_set", "FVD (set, against the driving videos)", "↓", "{:.2f}", 1),)
# HUMANVID_COLUMNS: the former name, kept for callers that imported it
HUMANVID_COLUMNS = TIKTOK_COLUMNS


def json_safe(value):
    """``value`` with every non-finite float (PSNR of identical frames is +inf) replaced by None, so that
    the report is valid JSON; the report's ``notes`` say where and why."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _cell(value, fmt: str, scale: float = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return fmt.format(value * scale)


def _table(name: str, agg: dict, columns: tuple) -> list[str]:
    return ["| Method | " + " | ".join(f"{t} {d}" for _, t, d, _, _ in columns) + " |",
            "| --- |" + " --- |" * len(columns),
            f"| {name} | " + " | ".join(_cell(agg.get(m), f, k) for m, _, _, f, k in columns) + " |", ""]


def markdown_table(report: dict, name: str) -> str:
    """The aggregate numbers as Markdown tables in the paper's columns and scale (one per protocol run),
    the recipe, then what each number is."""
    agg = report["aggregate"]
    lines = [f"# Evaluation: {name}", ""]
    if report["protocol"] in ("humanvid", "all"):
        lines += ["## TikTok protocol (HumanVid), as the paper's Table 2", ""] + _table(name, agg, TIKTOK_COLUMNS)
        lines += ["More numbers (not columns of the paper's table):", ""] + _table(name, agg, TIKTOK_EXTRA_COLUMNS)
    if report["protocol"] in ("vbench-i2v", "all"):
        lines += ["## VBench-I2V (percent), as the paper's Table 2", ""] + _table(name, agg, VBENCH_COLUMNS)
        if report.get("table") != "xdance":
            lines += ["More numbers (not columns of the paper's table):", ""] + _table(name, agg, VBENCH_EXTRA_COLUMNS)
    recipe = dict(report.get("recipe") or {})
    opts = report.get("options", {})
    size = opts.get("fid_resize")
    if report["protocol"] in ("humanvid", "all"):
        recipe.setdefault("frame pairing", report.get("pairing") or opts.get("sampling"))
        recipe.setdefault("SSIM/PSNR/LPIPS frames", "every paired frame" if opts.get("frame_sampling") == "all" else
                          f"one random frame per video (HumanVid's sample-once, seed {opts.get('sample_seed')})")
        recipe.setdefault("FID", f"{opts.get('fid_frames') or 'every scored'} frames per video, pre-resize "
                          + (f"{size}x{size} (HumanVid)" if size else "none (pytorch-fid's own 299x299 resize)"))
    if report["protocol"] in ("vbench-i2v", "all"):
        recipe.setdefault("VBench-I2V", f"version {opts.get('vbench_version')}; report.json keeps the 0-1 values")
    lines += ["## Recipe", ""] + [f"- {k}: {v}" for k, v in recipe.items()] + [""]
    lines += ["## What each number is", ""]
    lines += [f"- `{k}`: {v}" for k, v in report["conventions"].items()]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- `{k}`: {v}" for k, v in report["notes"].items()]
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- `{k}`: {v}" for k, v in report["skipped"].items()]
    lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out: str | Path, name: str | None = None) -> list[Path]:
    """Write ``out`` (JSON), ``<out stem>.md`` and the PNG plots beside it; returns the written paths.

    Infinite values (PSNR of identical frames) are ∞ in the table and null in the JSON."""
    out = Path(out)
    name = name or Path(report["generated"]).name
    written = []
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(json_safe(report), indent=1, ensure_ascii=False, allow_nan=False))
    written.append(out)
    table = out.with_suffix(".md")
    with atomic_path(table) as tmp:
        tmp.write_text(markdown_table(report, name), encoding="utf-8")
    written.append(table)
    written += write_plots(report, out.parent / f"{out.stem}_per_video.png", out.parent / f"{out.stem}_per_frame.png")
    return written


def write_plots(report: dict, per_video_png: Path, per_frame_png: Path) -> list[Path]:
    """Per-video bars (one panel per metric) and per-frame curves (one panel per metric, a line per video)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("skip plots: matplotlib is not installed (pip install 'steadydancer[eval]')")
        return []
    videos = report["videos"]
    metrics = sorted({m for v in videos.values() for m in v["metrics"]})
    frame_metrics = sorted({m for v in videos.values() for m in v["per_frame"]})
    written = []
    for path, names, draw in ((per_video_png, metrics, _bars), (per_frame_png, frame_metrics, _curves)):
        if not names:
            continue
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
        for ax, metric in zip(axes.flat, names):
            draw(ax, videos, metric)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
        written.append(path)
    return written


def _bars(ax, videos: dict, metric: str) -> None:
    ids = [i for i, v in videos.items() if metric in v["metrics"] and math.isfinite(v["metrics"][metric])]
    ax.bar(range(len(ids)), [videos[i]["metrics"][metric] for i in ids])
    ax.set_xticks(range(len(ids)), ids, rotation=45, ha="right", fontsize=7)
    ax.set_title(metric)


def _curves(ax, videos: dict, metric: str) -> None:
    for vid, entry in videos.items():
        if metric in entry["per_frame"]:
            # infinite values (identical frames) are left out of the curve (a gap)
            ax.plot([v if math.isfinite(v) else math.nan for v in entry["per_frame"][metric]], label=vid, linewidth=1)
    ax.set_title(f"{metric} per frame")
    ax.set_xlabel("frame (pair) index")
    if len(videos) <= 8:
        ax.legend(fontsize=6)

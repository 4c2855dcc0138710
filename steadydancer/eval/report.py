"""Writing the report: report.json, a Markdown table in the layout of the paper's Table 2, PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..fileio import atomic_path

# (metric, column title, better direction, format); the column groups of the paper's Table 2
HUMANVID_COLUMNS = (("ssim", "SSIM", "↑", "{:.4f}"), ("psnr", "PSNR", "↑", "{:.2f}"),
                    ("lpips", "LPIPS", "↓", "{:.4f}"), ("lpips_01", "LPIPS [0,1] in", "↓", "{:.4f}"),
                    ("fid", "FID", "↓", "{:.2f}"), ("fvd_pair", "FVD (pair)", "↓", "{:.2f}"),
                    ("fvd_set", "FVD (set)", "↓", "{:.2f}"))
VBENCH_COLUMNS = (("i2v_subject", "I2V Subject", "↑", "{:.4f}"), ("i2v_background", "I2V Background", "↑", "{:.4f}"),
                  ("subject_consistency", "Subject Cons.", "↑", "{:.4f}"),
                  ("background_consistency", "Background Cons.", "↑", "{:.4f}"),
                  ("temporal_flickering", "Temporal Flickering", "↑", "{:.4f}"),
                  ("motion_smoothness", "Motion Smoothness", "↑", "{:.4f}"),
                  ("aesthetic_quality", "Aesthetic Quality", "↑", "{:.4f}"),
                  ("imaging_quality", "Imaging Quality", "↑", "{:.4f}"), ("fvd_set", "FVD (set)", "↓", "{:.2f}"))


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return fmt.format(value)


def markdown_table(report: dict, name: str) -> str:
    """The aggregate numbers as Markdown tables (one per protocol run), then what each number is."""
    agg = report["aggregate"]
    groups = []
    if report["protocol"] in ("humanvid", "all"):
        groups.append(("TikTok protocol (HumanVid)", HUMANVID_COLUMNS))
    if report["protocol"] in ("vbench-i2v", "all"):
        groups.append(("VBench-I2V", VBENCH_COLUMNS))
    lines = [f"# Evaluation: {name}", ""]
    for title, columns in groups:
        lines += [f"## {title}", "",
                  "| Method | " + " | ".join(f"{t} {d}" for _, t, d, _ in columns) + " |",
                  "| --- |" + " --- |" * len(columns),
                  f"| {name} | " + " | ".join(_cell(agg.get(m), f) for m, _, _, f in columns) + " |", ""]
    lines += ["## What each number is", ""]
    lines += [f"- `{k}`: {v}" for k, v in report["conventions"].items()]
    opts = report.get("options", {})
    size = opts.get("fid_resize")
    pre_resize = f"{size}x{size} (HumanVid)" if size else "none (pytorch-fid's own 299x299 resize)"
    lines.append(f"- FID pre-resize: {pre_resize}; reference frame pairing: {opts.get('sampling')}")
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- `{k}`: {v}" for k, v in report["skipped"].items()]
    lines.append("")
    return "\n".join(lines)


def write_report(report: dict, out: str | Path, name: str | None = None) -> list[Path]:
    """Write ``out`` (JSON), ``<out stem>.md`` and the PNG plots beside it; returns the written paths."""
    out = Path(out)
    name = name or Path(report["generated"]).name
    written = []
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False))
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
    ids = [i for i, v in videos.items() if metric in v["metrics"]]
    ax.bar(range(len(ids)), [videos[i]["metrics"][metric] for i in ids])
    ax.set_xticks(range(len(ids)), ids, rotation=45, ha="right", fontsize=7)
    ax.set_title(metric)


def _curves(ax, videos: dict, metric: str) -> None:
    for vid, entry in videos.items():
        if metric in entry["per_frame"]:
            ax.plot(entry["per_frame"][metric], label=vid, linewidth=1)
    ax.set_title(f"{metric} per frame")
    ax.set_xlabel("frame (pair) index")
    if len(videos) <= 8:
        ax.legend(fontsize=6)

"""``steadydancer ui``: a Gradio app on top of the Python API.

Two steps, each one queued job: *Prepare poses* runs :func:`steadydancer.api.prepare_pose` on the
uploaded reference image and driving video and shows the side-by-side preview (all.mp4);
*Generate* runs one :class:`steadydancer.api.SteadyDancerPipeline` (made once per app, its
models loaded on the first run and kept) on the prepared folder, with a progress bar over the
sampling steps, and returns the mp4. Both share one queue slot, so two browser tabs never run
at once. Bad input shows its one-line message in the page (``gr.Error``), never a traceback.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from ..options import SOLVERS
from ..errors import InputError
from ..pipeline import config as C

log = logging.getLogger(__name__)

# one queue slot for both steps: the pose stage and the generation share the machine
QUEUE = "steadydancer"
DEFAULT_SIZE = "1024*576"


def parse_size(value: str) -> str | int:
    """An official "W*H" size, or a number: a pixel area (experiments, the tiny test checkpoint)."""
    value = str(value).strip()
    return int(value) if value.isdigit() else value


class DancerApp:
    """The app's state: one pipeline, a work folder, the folders it prepared (the only ones
    *Generate* accepts, so a client cannot point it at other folders of the server)."""

    def __init__(self, ckpt_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None,
                 **from_pretrained: Any) -> None:
        from ..api import SteadyDancerPipeline

        self.pipe = SteadyDancerPipeline.from_pretrained(ckpt_dir, **from_pretrained)  # checks the files now
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="steadydancer-ui-")).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.prepared: set[str] = set()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()  # the queue already serialises jobs; this guards the counter

    def _next(self, stem: str) -> Path:
        with self._lock:
            return self.work_dir / f"{stem}-{next(self._counter):04d}-{int(time.time())}"

    # -- handlers (InputError -> gr.Error: the page shows one line) ---------------------------

    def prepare(self, image: str | None, video: str | None, prompt: str, align_frame: float,
                frame_count: float, target_fps: float, augment_seed: float) -> tuple[str, str, str, str]:
        """-> (all.mp4 preview, prepared folder, prompt, one line about the poses)."""
        from ..api import prepare_pose

        try:
            if not image:
                raise InputError("reference image: upload one")
            if not video:
                raise InputError("driving video: upload one")
            align, count = int(align_frame or 0), int(frame_count or 0)
            if align < 0:
                raise InputError(f"align frame {align}: must be 0 or more")
            if count < 1:
                raise InputError(f"frame count {count}: must be at least 1")
            prepared = prepare_pose(image, video, self._next("poses"), prompt=prompt.strip() or None,
                                    align_frame=align, max_frame=align + count,
                                    target_fps=float(target_fps) if target_fps else None,
                                    seed=int(augment_seed or 0), progress=False)
        except InputError as exc:
            raise gr.Error(str(exc)) from None
        self.prepared.add(str(prepared.folder))
        fps = f"{prepared.fps:.4g} fps" if prepared.fps else "the video's rate"
        info = (f"{len(prepared)} pose frames from frame {align} at {fps}; the video is written at "
                f"{C.SAMPLE_FPS} fps. Generate makes up to {min(len(prepared), C.DEFAULT_FRAME_NUM)} frames "
                "(4n+1) unless you ask for more.")
        return str(prepared.preview), str(prepared.folder), prepared.prompt, info

    def generate(self, folder: str, prompt: str, negative_prompt: str, num_frames: float, size: str,
                 steps: float, guidance_scale: float, condition_guidance_scale: float, cfg_start: float,
                 cfg_end: float, solver: str, seed: float,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        """-> (the mp4, one line: frames, size, seed, time)."""
        from ..api import PreparedInputs, export_to_video

        started = time.perf_counter()
        try:
            if not folder or folder not in self.prepared:
                raise InputError("prepare the poses first (step 1)")
            prepared = PreparedInputs.from_folder(folder)
            total = int(steps)

            def on_step(pipe, step, timestep, kwargs):
                progress((step + 1, total), desc="sampling", unit="steps")
                return {}

            progress(0, desc="encoding (the models load on the first run)")
            out = self.pipe(prepared, prompt=prompt, negative_prompt=negative_prompt.strip() or None,
                            num_frames=int(num_frames) if num_frames else None, size=parse_size(size),
                            num_inference_steps=total, guidance_scale=float(guidance_scale),
                            condition_guidance_scale=float(condition_guidance_scale),
                            cfg_window=(float(cfg_start), float(cfg_end)), solver=solver,
                            seed=None if seed is None or int(seed) < 0 else int(seed),
                            callback_on_step_end=on_step, progress=False)
        except InputError as exc:
            raise gr.Error(str(exc)) from None
        frames = out.frames[0]
        path = export_to_video(frames, self._next("steadydancer").with_suffix(".mp4"), fps=out.fps)
        width, height = frames[0].size
        info = (f"{len(frames)} frames, {width}x{height}, {out.fps} fps, seed {out.seed}, "
                f"{time.perf_counter() - started:.1f} s")
        return str(path), info


# initial values of the settings (build_app's ``defaults`` may change them)
DEFAULTS = {"align_frame": 0, "frame_count": C.DEFAULT_FRAME_NUM, "target_fps": 0, "augment_seed": 0,
            "size": DEFAULT_SIZE, "num_frames": 0, "seed": -1, "steps": C.DEFAULT_STEPS, "solver": "unipc",
            "guidance_scale": 5.0, "condition_guidance_scale": 1.0, "cfg_start": 0.1, "cfg_end": 0.4}


def build_app(ckpt_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None,
              defaults: dict[str, Any] | None = None, **from_pretrained: Any) -> gr.Blocks:
    """The Gradio app (not launched; see :func:`launch`). ``defaults``: initial values of the
    settings (keys of :data:`DEFAULTS`). ``from_pretrained``: the keywords of
    :meth:`SteadyDancerPipeline.from_pretrained` (device, dtype, offload_model, memory options).
    The checkpoint folder is checked here; the models load on the first generation."""
    unknown = sorted(set(defaults or {}) - set(DEFAULTS))
    if unknown:
        raise InputError(f"build_app defaults: unknown settings {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    d = {**DEFAULTS, **(defaults or {})}
    app = DancerApp(ckpt_dir, work_dir, **from_pretrained)
    with gr.Blocks(title="SteadyDancer") as demo:
        gr.Markdown("# SteadyDancer\nA reference image + a driving dance video -> a video that starts at the "
                    "image and moves as the dancer does. 1. prepare the poses, 2. generate.")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### 1. Prepare poses")
                with gr.Row():
                    image = gr.Image(label="reference image", type="filepath", height=300)
                    video = gr.Video(label="driving video", height=300)
                prompt = gr.Textbox(label="prompt (describe the reference image)", lines=2)
                with gr.Row():
                    align_frame = gr.Number(label="align frame", value=d["align_frame"], precision=0, minimum=0)
                    frame_count = gr.Number(label="frame count", value=d["frame_count"], precision=0, minimum=1)
                    target_fps = gr.Number(label="target fps (0: every frame, the official recipe)", value=d["target_fps"],
                                           minimum=0)
                    augment_seed = gr.Number(label="augmentation seed", value=d["augment_seed"], precision=0)
                prepare_button = gr.Button("Prepare poses", variant="secondary")
                preview = gr.Video(label="aligned poses: reference | its pose | positive | negative | video | raw pose",
                                   interactive=False)
                pose_info = gr.Markdown()
                folder = gr.Textbox(label="prepared folder", visible=False)
            with gr.Column():
                gr.Markdown("### 2. Generate")
                with gr.Row():
                    size = gr.Dropdown(label="size (pixel area)", choices=list(C.SUPPORTED_SIZES),
                                       value=d["size"], allow_custom_value=True)
                    num_frames = gr.Number(label="frames, 4n+1 (0: up to 81)", value=d["num_frames"], precision=0, minimum=0)
                    seed = gr.Number(label="seed (-1: random)", value=d["seed"], precision=0)
                with gr.Row():
                    steps = gr.Slider(label="steps", minimum=1, maximum=100, step=1, value=d["steps"])
                    solver = gr.Dropdown(label="solver", choices=list(SOLVERS), value=d["solver"])
                with gr.Row():
                    guidance = gr.Number(label="text guidance", value=d["guidance_scale"])
                    condition_guidance = gr.Number(label="pose guidance", value=d["condition_guidance_scale"])
                    cfg_start = gr.Number(label="pose CFG from (fraction of steps)", value=d["cfg_start"])
                    cfg_end = gr.Number(label="pose CFG to", value=d["cfg_end"])
                negative_prompt = gr.Textbox(label="negative prompt (empty: the official one)", lines=1)
                generate_button = gr.Button("Generate", variant="primary")
                result = gr.Video(label="result", interactive=False, height=460)
                result_info = gr.Markdown()
        prepare_button.click(app.prepare, [image, video, prompt, align_frame, frame_count, target_fps, augment_seed],
                             [preview, folder, prompt, pose_info], api_name="prepare",
                             concurrency_limit=1, concurrency_id=QUEUE)
        generate_button.click(app.generate, [folder, prompt, negative_prompt, num_frames, size, steps, guidance,
                                             condition_guidance, cfg_start, cfg_end, solver, seed],
                              [result, result_info], api_name="generate", concurrency_limit=1,
                              concurrency_id=QUEUE)
    demo.queue(default_concurrency_limit=1)
    demo.steadydancer = app  # tests and launch() reach the app's state through the Blocks
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True) -> str:
    """Serve ``demo``; returns its local URL (``block`` False: return at once, serving in a thread)."""
    _, url, _ = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                            allowed_paths=[str(demo.steadydancer.work_dir)], quiet=not block)
    return url

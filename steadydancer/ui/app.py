"""``steadydancer ui``: a Gradio app on top of the Python API.

Two steps, each one queued job: *Prepare poses* runs :func:`steadydancer.api.prepare_pose` on the
uploaded reference image and driving video and shows the side-by-side preview (all.mp4);
*Generate* runs one :class:`steadydancer.api.SteadyDancerPipeline` (made once per app, its
models loaded on the first run and kept) on the prepared poses, with a progress bar over the
sampling steps, and returns the mp4. Both share one queue slot, so two jobs never run at once.

Sessions are kept apart: the prepared folder lives in the session's ``gr.State`` (on the server,
never sent to the browser), under a random name; *Generate* only reads its own session's folder
and refuses while a *Prepare* of the same session runs. The browser only ever receives copies of
finished videos (Gradio's cache), never a path of the work folder. Every error is one line in the
page (``gr.Error``), never a traceback.

Finished videos go to the output folder with a JSON sidecar (``X.json``, key ``settings``) that the
gallery's *Reuse settings* loads back into the controls.

The speed settings (step cache, its threshold and MagCache ratios, VAE tiling) are per generation
too; their defaults are the flags the UI was started with. The ratios are picked by name from the
files the server offers (the published ones in ``configs/magcache/`` and the launch-time
``--cache_ratios`` file), never by a path typed in the page.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import InputError
from ..models.step_cache import STEP_CACHE_KINDS
from ..options import MODES, SOLVERS, LongVideoOptions, SamplingOptions, check_seed, largest_area
from ..pipeline import config as C

log = logging.getLogger(__name__)

# one queue slot for both steps: the pose stage and the generation share the machine
QUEUE = "steadydancer"
SETTINGS_KEY = "settings"  # this app's section of a video's JSON sidecar
NO_RATIOS = "none"  # the MagCache ratios choice that names no file
# the UI's names of the step-cache flags, for the messages of the checks the command line runs
CACHE_FIELD_NAMES = {"--step_cache": "step cache", "--cache_threshold": "cache threshold",
                     "--cache_ratios": "MagCache ratios", "--cache_interval": "cache interval"}


class Cancelled(Exception):
    """The session's Cancel button was pressed: the job stops between two sampling steps."""


def parse_size(value: Any, allow_any_size: bool = False) -> str | int:
    """An official "W*H" size, or a number: a pixel area (experiments, the tiny test checkpoint),
    at most the largest official area unless ``allow_any_size`` (one request must not be able to
    ask for more memory than the machine has)."""
    text = "" if value is None else str(value).strip()
    if not text.isdigit():
        return text
    area = int(text)
    if not allow_any_size and area > largest_area():
        raise InputError(f"size {area}: a pixel area larger than the largest official size "
                         f"({largest_area()} pixels); start the UI with --allow_any_size to allow it")
    return area


def number(value: Any, name: str, integer: bool = False, minimum: float | None = None) -> float | int:
    """A number field's value (a cleared field is None): one line naming the field when it is not a
    number (or below ``minimum``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{name}: enter a number")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} {value!r}: expected a number") from None
    if integer:
        if result != int(result):
            raise InputError(f"{name} {value}: expected a whole number")
        result = int(result)
    if minimum is not None and result < minimum:
        raise InputError(f"{name} {value}: must be at least {minimum:g}")
    return result


def parse_seed(value: Any) -> int | None:
    """The seed field (text, so that every digit survives the browser): -1 or empty: random."""
    text = "" if value is None else str(value).strip()
    if text in ("", "-1"):
        return None
    try:
        seed = int(text)
    except ValueError:
        raise InputError(f"seed {text!r}: expected a whole number (-1: random)") from None
    check_seed(seed, "seed")
    return seed


def parse_threshold(value: Any) -> float | None:
    """The cache threshold field (text): empty -> None (the kind's default), else a number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InputError(f"cache threshold {value!r}: expected a number >= 0 (empty: the kind's default)")
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(f"cache threshold {value!r}: expected a number >= 0 (empty: the kind's default)") from None


def parse_interval(value: Any) -> int | None:
    """The cache interval field (text): empty -> None (TaylorSeer's default), else whole steps."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = value.strip() if isinstance(value, str) else value
    try:
        if isinstance(text, bool) or float(text) != int(float(text)):
            raise ValueError
        return int(float(text))
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"cache interval {value!r}: expected a whole number of steps >= 1 (empty: the default, "
                         f"5)") from None


def cache_field_names(message: str) -> str:
    """A step-cache check's message with the page's field names instead of the flags."""
    for flag, field in CACHE_FIELD_NAMES.items():
        message = message.replace(flag, field)
    return message


def one_line(exc: BaseException) -> str:
    """The first line of an unexpected error, for the page (the traceback goes to the server log)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class DancerApp:
    """The app's state: one pipeline, a work folder (prepared poses, private), an output folder
    (finished videos and their settings), and per-session flags (preparing, cancel)."""

    def __init__(self, ckpt_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None,
                 output_dir: str | os.PathLike | None = None, allow_any_size: bool = False,
                 lora_dir: str | os.PathLike | None = None, **from_pretrained: Any) -> None:
        from ..api import SteadyDancerPipeline

        self.pipe = SteadyDancerPipeline.from_pretrained(ckpt_dir, **from_pretrained)  # checks the files now
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="steadydancer-ui-")).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir = Path(output_dir).resolve() if output_dir else self.work_dir / "videos"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.allow_any_size = allow_any_size
        self.lora_dir = Path(lora_dir).resolve() if lora_dir else None
        if self.lora_dir is not None and not self.lora_dir.is_dir():
            raise InputError(f"--lora_dir {lora_dir}: folder not found")
        self.ratio_files, self.launch_ratios = self._offered_ratio_files(self.pipe.pipeline.memory.cache_ratios)
        self._lock = threading.Lock()
        self._preparing: set[str] = set()  # sessions with a Prepare running
        self._cancel: dict[str, threading.Event] = {}

    # -- sessions -----------------------------------------------------------------------------

    @staticmethod
    def _session(request: gr.Request | None) -> str:
        return (getattr(request, "session_hash", None) or "no-session") if request is not None else "no-session"

    def _cancel_event(self, session: str) -> threading.Event:
        with self._lock:
            return self._cancel.setdefault(session, threading.Event())

    def cancel(self, request: gr.Request) -> str:
        """The Cancel button: the running generation of this session stops after its current step."""
        self._cancel_event(self._session(request)).set()
        return "cancelling after the current step ..."

    def _served(self, path: Path, component: gr.components.Component | None) -> str:
        """A copy of a finished file in Gradio's cache (what the browser may fetch), not our path."""
        if component is None:
            return str(path)
        return component.move_resource_to_block_cache(str(path)) or str(path)

    # -- handlers (InputError -> gr.Error: the page shows one line) ---------------------------

    def prepare(self, image: str | None, video: str | None, prompt: str, align_frame: Any, frame_count: Any,
                target_fps: Any, augment_seed: Any, state: dict | None,
                request: gr.Request = None) -> tuple[str, dict, str, str]:
        """-> (all.mp4 preview, the session state holding the prepared folder, prompt, one line)."""
        from ..api import prepare_pose

        session = self._session(request)
        with self._lock:
            self._preparing.add(session)
        try:
            if not image:
                raise InputError("reference image: upload one")
            if not video:
                raise InputError("driving video: upload one")
            align = number(align_frame, "align frame", integer=True, minimum=0)
            count = number(frame_count, "frame count", integer=True, minimum=1)
            fps = number(target_fps, "target fps", minimum=0) if target_fps not in (None, "") else 0
            seed = number(augment_seed, "augmentation seed", integer=True, minimum=0)
            folder = self.work_dir / f"poses-{secrets.token_hex(16)}"  # not guessable
            prepared = prepare_pose(image, video, folder, prompt=(prompt or "").strip() or None,
                                    align_frame=align, max_frame=align + count,
                                    target_fps=float(fps) if fps else None, seed=seed, progress=False)
        except InputError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 (anything else: one line in the page, the traceback in the log)
            log.exception("prepare failed")
            raise gr.Error(one_line(exc)) from None
        finally:
            with self._lock:
                self._preparing.discard(session)
        old = (state or {}).get("folder")
        if old and Path(old).parent == self.work_dir and Path(old) != prepared.folder:
            shutil.rmtree(old, ignore_errors=True)  # one prepared set per session
        pose_fps = f"{prepared.fps:.4g} fps" if prepared.fps else "the video's rate"
        speed = ""
        if prepared.fps and abs(prepared.fps - C.SAMPLE_FPS) > 1e-3:
            speed = (f" The video is written at {C.SAMPLE_FPS} fps, so the dance plays at "
                     f"{C.SAMPLE_FPS / prepared.fps:.2g}x its speed: set target fps {C.SAMPLE_FPS} for real speed "
                     "(and the driving video's sound).")
        info = (f"{len(prepared)} pose frames from frame {align} at {pose_fps}. Generate makes up to "
                f"{min(len(prepared), C.DEFAULT_FRAME_NUM)} frames (4n+1) unless you ask for more.{speed}")
        # what generate needs, kept on the server: the folder, and for the sound the driving video and
        # the time of the first pose frame
        state = {"folder": str(prepared.folder), "video": str(video), "fps": prepared.fps,
                 "start_s": align / prepared.fps if prepared.fps else 0.0}
        return self._served(prepared.preview, getattr(self, "preview_component", None)), state, prepared.prompt, info

    def generate(self, prompt: str, negative_prompt: str, num_frames: Any, size: Any, steps: Any,
                 guidance_scale: Any, condition_guidance_scale: Any, cfg_start: Any, cfg_end: Any, solver: str,
                 seed: Any, context_frames: Any, context_overlap: Any, long_video_mode: str, loras: Any,
                 lora_strengths: Any, step_cache: Any, cache_threshold: Any, cache_interval: Any, cache_ratios: Any,
                 vae_tiling: Any, state: dict | None,
                 request: gr.Request = None, progress: gr.Progress = gr.Progress()) -> tuple[str, str, list]:
        """-> (the mp4, one line: frames, size, seed, time and the step cache's skipped forwards, the
        gallery)."""
        from ..api import PreparedInputs
        from ..models.step_cache import recording_step_cache

        started = time.perf_counter()
        session = self._session(request)
        cancel = self._cancel_event(session)
        cancel.clear()
        try:
            with self._lock:
                if session in self._preparing:
                    raise InputError("the poses are being prepared: generate when step 1 has finished")
            folder = (state or {}).get("folder")
            if not folder or not Path(folder).is_dir():
                raise InputError("prepare the poses first (step 1)")
            settings = {
                "prompt": prompt or "", "negative_prompt": (negative_prompt or "").strip(),
                "num_frames": number(num_frames, "frames", integer=True, minimum=0),
                "size": parse_size(size, self.allow_any_size),
                "steps": number(steps, "steps", integer=True, minimum=1),
                "guidance_scale": number(guidance_scale, "text guidance"),
                "condition_guidance_scale": number(condition_guidance_scale, "pose guidance"),
                "cfg_start": number(cfg_start, "pose guidance from"),
                "cfg_end": number(cfg_end, "pose guidance until"), "solver": solver,
                "context_frames": number(context_frames, "window frames", integer=True, minimum=5),
                "context_overlap": number(context_overlap, "window overlap", integer=True, minimum=1),
                "long_video": long_video_mode,
            }
            settings["loras"] = [name for name, _ in self.use_loras(loras, lora_strengths)]
            settings["lora_strengths"] = "" if lora_strengths is None else str(lora_strengths)
            settings.update(self.use_speed_settings(step_cache, cache_threshold, cache_ratios, vae_tiling,
                                                    interval=cache_interval))
            seed_value = parse_seed(seed)
            prepared = PreparedInputs.from_folder(folder)
            total = settings["steps"]

            def on_step(pipe, step, timestep, kwargs):
                if cancel.is_set():
                    raise Cancelled()
                progress((step + 1, total), desc="sampling", unit="steps")
                return {}

            progress(0, desc="encoding (the models load on the first run)")
            long_video = LongVideoOptions(context_frames=settings["context_frames"],
                                          context_overlap=settings["context_overlap"], mode=long_video_mode)
            # the cache's counts of this job only (recorded per thread: another session's job never mixes in)
            with recording_step_cache() as cache_report:
                out = self.pipe(prepared, prompt=settings["prompt"],
                                negative_prompt=settings["negative_prompt"] or None,
                                num_frames=settings["num_frames"] or None, size=settings["size"],
                                num_inference_steps=total, guidance_scale=settings["guidance_scale"],
                                condition_guidance_scale=settings["condition_guidance_scale"],
                                cfg_window=(settings["cfg_start"], settings["cfg_end"]), solver=solver,
                                seed=seed_value, callback_on_step_end=on_step, long_video=long_video,
                                progress=False)
        except Cancelled:
            raise gr.Error("cancelled") from None
        except (InputError, ValueError, TypeError) as exc:
            raise gr.Error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except Exception as exc:  # noqa: BLE001
            log.exception("generate failed")
            raise gr.Error(one_line(exc)) from None
        frames = out.frames[0]
        settings["seed"] = str(out.seed)
        cache_summary = cache_report.summary()  # None when no cache ran
        if cache_summary:
            settings["step_cache_summary"] = cache_summary  # what the cache did (not read back by Reuse)
        path = self.write_video(frames, out.fps, settings, prepared, state)
        width, height = frames[0].size
        info = (f"{len(frames)} frames, {width}x{height}, {out.fps} fps, seed {out.seed}, "
                f"{time.perf_counter() - started:.1f} s" + (f", {cache_summary}" if cache_summary else ""))
        return self._served(path, getattr(self, "result_component", None)), info, self.gallery()

    def write_video(self, frames: list, fps: int, settings: dict, prepared: Any, state: dict | None) -> Path:
        """The finished mp4 in the output folder (atomically) with its settings sidecar; the driving
        video's sound is carried over when the poses are at the output's rate (real timing)."""
        from ..api import export_to_video
        from ..pipeline.sidecar import update_sidecar

        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        path = self.output_dir / f"steadydancer_{stamp}_{settings['seed']}_{secrets.token_hex(3)}.mp4"
        audio = None
        if state and state.get("fps") and abs(float(state["fps"]) - fps) < 1e-3:
            audio = state.get("video")
        start = float(state.get("start_s", 0.0)) if audio else 0.0
        export_to_video(frames, path, fps=fps, audio_from=audio, audio_start=start)
        update_sidecar(path, **{SETTINGS_KEY: settings})
        return path

    # -- LoRAs ----------------------------------------------------------------------------------

    def lora_files(self) -> list[str]:
        """The LoRA files the picker offers: ``*.safetensors`` in --lora_dir (names, sorted)."""
        if self.lora_dir is None:
            return []
        return sorted(p.name for p in self.lora_dir.glob("*.safetensors") if p.is_file())

    def use_loras(self, names: list[str] | None, strengths: Any) -> list[tuple[str, float]]:
        """Make the pipeline's DiT carry exactly these LoRAs (reloaded on the next generation when
        they change; checked against the DiT's layers first). Returns [(name, strength)]."""
        from dataclasses import replace

        from ..models.memory import check_memory_options

        names = list(names or [])
        if not names:
            if self.lora_dir is None:
                return []  # no picker: the --lora flags (if any) stay as they were
        elif self.lora_dir is None:
            raise InputError("LoRAs: start the UI with --lora_dir to pick LoRA files")
        text = "" if strengths is None else str(strengths).strip()
        values = [v.strip() for v in text.split(",") if v.strip()] if text else []
        if values and len(values) not in (1, len(names)):
            raise InputError(f"LoRA strengths {text!r}: give one, or one per chosen LoRA ({len(names)})")
        try:
            numbers = [float(v) for v in values] or [1.0]
        except ValueError:
            raise InputError(f"LoRA strengths {text!r}: expected numbers separated by commas") from None
        numbers = numbers * len(names) if len(numbers) == 1 else numbers
        chosen = []
        for name in names:
            if name not in self.lora_files():  # only files of --lora_dir, never another path
                raise InputError(f"LoRA {name!r}: not a .safetensors file in --lora_dir")
            chosen.append((self.lora_dir / name, numbers[len(chosen)]))
        pipeline = self.pipe.pipeline
        if chosen != list(pipeline.memory.loras):
            memory = replace(pipeline.memory, loras=chosen)
            try:
                check_memory_options(pipeline.ckpt_dir, pipeline.device, memory)
            except InputError as exc:
                raise InputError(str(exc).replace("--lora ", "LoRA ")) from None
            pipeline.memory = memory
            pipeline._dit = None  # loaded again, with these LoRAs merged, by the next generation
            log.info("LoRAs now %s", ", ".join(f"{p.name}:{s:g}" for p, s in chosen) or "none")
        return [(path.name, strength) for path, strength in chosen]

    # -- speed: step cache and VAE tiling -----------------------------------------------------

    @staticmethod
    def _offered_ratio_files(launch_file: Path | None) -> tuple[dict[str, Path], str]:
        """(choice name -> file, the launch-time file's name or NO_RATIOS): the published ratios
        (``configs/magcache/*.json``, by file name) and the ``--cache_ratios`` file the UI was
        started with (``NAME (--cache_ratios)``, unless it is a published one). Only these files can
        be read from the page: a web user never names a server path."""
        from ..models.step_cache import PUBLISHED_RATIOS

        offered = {path.name: path for path in sorted(PUBLISHED_RATIOS.glob("*.json")) if path.is_file()}
        if launch_file is None:
            return offered, NO_RATIOS
        launch_file = Path(launch_file).resolve()
        for name, path in offered.items():
            if path.resolve() == launch_file:
                return offered, name
        name = f"{launch_file.name} (--cache_ratios)"
        return {name: launch_file, **offered}, name

    def ratio_choices(self) -> list[str]:
        """The MagCache ratios dropdown's choices: NO_RATIOS, then the offered files."""
        return [NO_RATIOS, *self.ratio_files]

    def launch_speed_settings(self) -> dict[str, Any]:
        """The speed controls' values that the UI was started with (its memory/speed flags)."""
        memory = self.pipe.pipeline.memory
        return {"step_cache": memory.step_cache,
                "cache_threshold": "" if memory.cache_threshold is None else str(memory.cache_threshold),
                "cache_interval": "" if memory.cache_interval is None else str(memory.cache_interval),
                "cache_ratios": self.launch_ratios, "vae_tiling": bool(memory.vae_tiling)}

    def cache_kind_chosen(self, kind: str, threshold: Any, ratios: Any, interval: Any = "") -> tuple[Any, Any, Any]:
        """The user picked a step cache kind: clear what that kind does not take (a threshold is
        taken by the kinds that have a default one, ratios by magcache only, an interval by
        taylorseer only) and offer the launch-time ratios for magcache. -> (threshold, ratios, interval)."""
        from ..models.step_cache import DEFAULT_THRESHOLDS

        threshold = threshold if kind in DEFAULT_THRESHOLDS else ""
        interval = interval if kind == "taylorseer" else ""
        if kind != "magcache":
            return threshold, NO_RATIOS, interval
        return threshold, self.launch_ratios if ratios in (None, "", NO_RATIOS) else ratios, interval

    def use_speed_settings(self, kind: Any, threshold: Any, ratios: Any, vae_tiling: Any,
                           interval: Any = "") -> dict[str, Any]:
        """Make the next generation run with this step cache and VAE tiling: checked as the command
        line checks ``--step_cache``/``--cache_threshold``/``--cache_ratios``/``--cache_interval`` (one line naming the
        page's field), then put into the pipeline's memory options (the DiT stays loaded; the VAE
        reloads when the tiling changes). Returns the settings as the sidecar stores them."""
        from dataclasses import replace

        from ..models.step_cache import check_step_cache_options

        kind = "none" if kind in (None, "") else kind
        value = parse_threshold(threshold)
        steps_between = parse_interval(interval)
        label = NO_RATIOS if ratios in (None, "") else str(ratios)
        if label != NO_RATIOS and label not in self.ratio_files:
            raise InputError(f"MagCache ratios {label!r}: not a file this UI offers "
                             f"({', '.join(self.ratio_choices())})")
        path = self.ratio_files.get(label)
        if not isinstance(vae_tiling, bool):
            raise InputError(f"VAE tiling {vae_tiling!r}: expected true or false")
        if kind == "magcache" and path is None:  # the CLI's message would name a server path
            raise InputError("MagCache ratios: choose a file for step cache magcache (the published Wan 2.1 I2V "
                             "14B ratios are a starting point; the file of `steadydancer calibrate-cache`, given "
                             "with --cache_ratios at launch, fits this checkpoint)")
        pipeline = self.pipe.pipeline
        memory = replace(pipeline.memory, step_cache=kind, cache_threshold=value, cache_ratios=path,
                         cache_interval=steps_between, vae_tiling=vae_tiling)
        try:
            check_step_cache_options(kind, value, path, interval=steps_between)
            if kind != "none" and memory.batch_guidance:
                raise InputError("step cache: not with batched guidance (the UI was started with "
                                 "--batch_guidance); choose none")
            memory.step_cache_options()  # reads the ratios file: one line if it is unreadable
        except InputError as exc:
            message = cache_field_names(str(exc))
            raise InputError(message.replace(str(path), label) if path is not None else message) from None
        vae = pipeline._vae
        if vae is not None and vae.tiling != vae_tiling:
            pipeline._vae = None  # loaded again, tiled or not, by the next generation
        if memory != pipeline.memory:
            log.info("speed settings now: step cache %s (threshold %s, ratios %s), VAE tiling %s", kind,
                     "default" if value is None else f"{value:g}", label, "on" if vae_tiling else "off")
        pipeline.memory = memory
        return {"step_cache": kind, "cache_threshold": value, "cache_interval": steps_between, "cache_ratios": label,
                "vae_tiling": vae_tiling}

    # -- the gallery --------------------------------------------------------------------------

    def videos(self) -> list[Path]:
        """The output folder's finished videos, newest first."""
        found = [p for p in self.output_dir.glob("*.mp4") if not p.name.startswith(".")]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def gallery(self) -> list[tuple[str, str]]:
        """(served copy, caption) of each past video for the gallery."""
        component = getattr(self, "gallery_component", None)
        return [(self._served(p, component), p.name) for p in self.videos()[:48]]

    def reuse_settings(self, index: Any) -> list[Any]:
        """The settings of the gallery's selected video back into the controls (in SETTING_ORDER)."""
        from ..pipeline.sidecar import read_sidecar

        videos = self.videos()
        if index is None or not isinstance(index, (int, float)) or not 0 <= int(index) < len(videos):
            raise gr.Error("select a video in the gallery first")
        try:
            settings = read_sidecar(videos[int(index)]).get(SETTINGS_KEY)
        except ValueError as exc:  # a damaged sidecar: its one line in the page
            raise gr.Error(str(exc)) from None
        if not isinstance(settings, dict):
            raise gr.Error(f"{videos[int(index)].name}: no settings saved with this video")
        values = {key: settings.get(key, DEFAULTS[key]) for key in SETTING_ORDER}
        values["size"], values["seed"] = str(values["size"]), str(values["seed"])  # the controls hold text
        for key in ("cache_threshold", "cache_interval"):  # text fields
            values[key] = "" if values[key] in (None, "") else str(values[key])
        return [values[key] for key in SETTING_ORDER]


def _defaults() -> dict[str, Any]:
    """The controls' initial values: the official ones (SamplingOptions, LongVideoOptions: the same
    defaults as the command line and the Python API)."""
    sampling, long_video = SamplingOptions(), LongVideoOptions()
    return {"align_frame": 0, "frame_count": C.DEFAULT_FRAME_NUM, "target_fps": 0, "augment_seed": 0,
            "prompt": "", "negative_prompt": "", "size": C.DEFAULT_SIZE, "num_frames": 0, "seed": "-1",
            "steps": sampling.steps, "solver": sampling.solver, "guidance_scale": sampling.guide_scale,
            "condition_guidance_scale": sampling.condition_guide_scale, "cfg_start": sampling.st_cond_cfg,
            "cfg_end": sampling.end_cond_cfg, "context_frames": long_video.context_frames,
            "context_overlap": long_video.context_overlap, "long_video": long_video.mode, "loras": [],
            "lora_strengths": "", "step_cache": "none", "cache_threshold": "", "cache_interval": "",
            "cache_ratios": NO_RATIOS,
            "vae_tiling": False}


# initial values of the settings (build_app's ``defaults`` may change them)
DEFAULTS = _defaults()
# the generate settings a sidecar stores, in the order of generate's controls (reuse settings)
SETTING_ORDER = ("prompt", "negative_prompt", "num_frames", "size", "steps", "guidance_scale",
                 "condition_guidance_scale", "cfg_start", "cfg_end", "solver", "seed", "context_frames",
                 "context_overlap", "long_video", "loras", "lora_strengths", "step_cache", "cache_threshold",
                 "cache_interval", "cache_ratios", "vae_tiling")


def build_app(ckpt_dir: str | os.PathLike, work_dir: str | os.PathLike | None = None,
              defaults: dict[str, Any] | None = None, output_dir: str | os.PathLike | None = None,
              allow_any_size: bool = False, lora_dir: str | os.PathLike | None = None,
              **from_pretrained: Any) -> gr.Blocks:
    """The Gradio app (not launched; see :func:`launch`). ``defaults``: initial values of the
    settings (keys of :data:`DEFAULTS`). ``output_dir``: where finished videos and their settings
    go (default: ``videos/`` in the work folder). ``lora_dir``: the folder whose ``*.safetensors``
    the LoRA picker offers (None: no picker; the ``loras`` of ``from_pretrained`` stay). ``allow_any_size``: accept a pixel area above the
    largest official size. ``from_pretrained``: the keywords of
    :meth:`SteadyDancerPipeline.from_pretrained` (device, dtype, offload_model, memory options).
    The checkpoint folder is checked here; the models load on the first generation."""
    unknown = sorted(set(defaults or {}) - set(DEFAULTS))
    if unknown:
        raise InputError(f"build_app defaults: unknown settings {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    app = DancerApp(ckpt_dir, work_dir, output_dir=output_dir, allow_any_size=allow_any_size, lora_dir=lora_dir,
                    **from_pretrained)
    # the speed controls start at the flags the UI was started with
    d = {**DEFAULTS, **app.launch_speed_settings(), **(defaults or {})}
    d["seed"] = str(d["seed"])
    with gr.Blocks(title="SteadyDancer") as demo:
        state = gr.State(None)  # per session, on the server: {"folder": the prepared poses, ...}
        gr.Markdown("# SteadyDancer\nA reference image + a driving dance video -> a video that starts at the "
                    "image and moves as the dancer does. 1. prepare the poses, 2. generate.")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### 1. Prepare poses")
                with gr.Row():
                    image = gr.Image(label="reference image", type="filepath", height=300)
                    video = gr.Video(label="driving video", height=300)
                prompt = gr.Textbox(label="prompt", lines=2, value=d["prompt"],
                                    info="describe the person and the scene of the reference image")
                with gr.Row():
                    align_frame = gr.Number(label="align frame", value=d["align_frame"], precision=0, minimum=0,
                                            info="driving frame whose pose is matched to the reference; "
                                                 "earlier frames are skipped")
                    frame_count = gr.Number(label="frame count", value=d["frame_count"], precision=0, minimum=1,
                                            info="driving frames to read from the align frame on")
                    target_fps = gr.Number(label="target fps", value=d["target_fps"], minimum=0,
                                           info=f"{C.SAMPLE_FPS}: real speed (and the video's sound); "
                                                "0: every frame, the official recipe (a 24 fps dance plays at 0.67x)")
                    augment_seed = gr.Number(label="augmentation seed", value=d["augment_seed"], precision=0,
                                             info="seed of the negative (augmented) pose stream")
                prepare_button = gr.Button("Prepare poses", variant="secondary")
                preview = gr.Video(label="aligned poses: reference | its pose | positive | negative | video | raw pose",
                                   interactive=False)
                pose_info = gr.Markdown()
            with gr.Column():
                gr.Markdown("### 2. Generate")
                with gr.Row():
                    size = gr.Dropdown(label="size", choices=list(C.SUPPORTED_SIZES), value=d["size"],
                                       allow_custom_value=True,
                                       info="output area width*height; the shape follows the reference image")
                    num_frames = gr.Number(label="frames", value=d["num_frames"], precision=0, minimum=0,
                                           info="4n+1 (17, 33, 81 ...); 0: as many as prepared, up to 81")
                    seed = gr.Textbox(label="seed", value=d["seed"],
                                      info="-1: random; the seed used is shown under the video")
                with gr.Row():
                    steps = gr.Slider(label="steps", minimum=1, maximum=100, step=1, value=d["steps"],
                                      info="denoising steps: fewer is faster, 40 is the official")
                    solver = gr.Dropdown(label="solver", choices=list(SOLVERS), value=d["solver"],
                                         info="unipc: official; euler/lcm: for step-distillation LoRAs")
                with gr.Row():
                    guidance = gr.Number(label="text guidance", value=d["guidance_scale"],
                                         info="how strongly the prompt is followed")
                    condition_guidance = gr.Number(label="pose guidance", value=d["condition_guidance_scale"],
                                                   info="how strongly the poses are followed")
                    cfg_start = gr.Number(label="pose guidance from", value=d["cfg_start"],
                                          info="fraction of the steps (0 to 1) where it starts")
                    cfg_end = gr.Number(label="pose guidance until", value=d["cfg_end"],
                                        info="fraction of the steps where it ends")
                negative_prompt = gr.Textbox(label="negative prompt", lines=1, value=d["negative_prompt"],
                                             info="what to avoid; empty: the official one")
                with gr.Accordion("long videos (more frames than one window)", open=False):
                    with gr.Row():
                        context_frames = gr.Number(label="window frames", value=d["context_frames"], precision=0,
                                                   info="frames the model sees at once, 4n+1")
                        context_overlap = gr.Number(label="window overlap", value=d["context_overlap"], precision=0,
                                                    info="frames shared by neighbouring windows")
                        long_video_mode = gr.Dropdown(label="mode", choices=list(MODES), value=d["long_video"],
                                                      info="context: all windows every step (the paper's); "
                                                           "chain: one window after another")
                with gr.Accordion("LoRAs", open=False, visible=app.lora_dir is not None):
                    with gr.Row():
                        lora_names = gr.Dropdown(label="LoRA files", choices=app.lora_files(), value=d["loras"],
                                                 multiselect=True,
                                                 info="merged into the model (it reloads when the choice changes)")
                        lora_strengths = gr.Textbox(label="strengths", value=d["lora_strengths"],
                                                    info="one number, or one per LoRA, comma-separated (default 1)")
                with gr.Accordion("speed (step cache, VAE tiling)", open=False):
                    with gr.Row():
                        cache_kind = gr.Dropdown(label="step cache", choices=list(STEP_CACHE_KINDS),
                                                 value=d["step_cache"],
                                                 info="skip DiT forwards that the previous step predicts: faster, "
                                                      "slightly different (docs/speed.md)")
                        cache_threshold = gr.Textbox(label="cache threshold", value=d["cache_threshold"],
                                                     info="magcache, fbcache; empty: the kind's default "
                                                          "(magcache 0.06, fbcache 0.05); 0 skips nothing, higher "
                                                          "skips more")
                        cache_interval = gr.Textbox(label="cache interval", value=d["cache_interval"],
                                                    info="taylorseer: a full forward every N steps after the "
                                                         "first 3, extrapolated in between; empty: 5; 1 skips "
                                                         "nothing")
                        cache_ratios = gr.Dropdown(label="MagCache ratios", choices=app.ratio_choices(),
                                                   value=d["cache_ratios"],
                                                   info="magcache's per-step ratios: the published Wan 2.1 I2V "
                                                        "14B ones (a starting point) or the --cache_ratios file "
                                                        "the UI was started with")
                        vae_tiling = gr.Checkbox(label="VAE tiling", value=d["vae_tiling"],
                                                 info="encode and decode in tiles: less memory at large sizes "
                                                      "(the VAE reloads when this changes)")
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary")
                    cancel_button = gr.Button("Cancel", variant="stop")
                result = gr.Video(label="result", interactive=False, height=460)
                result_info = gr.Markdown()
        gr.Markdown("### Past videos\nSaved in the output folder with their settings; select one and "
                    "*Reuse settings* to load them into step 2.")
        gallery = gr.Gallery(label="past videos", columns=6, height=260, allow_preview=True,
                             value=app.gallery)
        selected = gr.State(None)
        with gr.Row():
            reuse_button = gr.Button("Reuse settings", variant="secondary")
            refresh_button = gr.Button("Refresh", variant="secondary")
        app.preview_component, app.result_component, app.gallery_component = preview, result, gallery

        settings = [prompt, negative_prompt, num_frames, size, steps, guidance, condition_guidance, cfg_start,
                    cfg_end, solver, seed, context_frames, context_overlap, long_video_mode, lora_names, lora_strengths,
                    cache_kind, cache_threshold, cache_interval, cache_ratios, vae_tiling]
        # Generate waits while this session prepares: the button is off until Prepare has finished
        prepare_event = prepare_button.click(lambda: gr.update(interactive=False), None, generate_button,
                                             queue=False, api_visibility="private")
        prepare_event.then(app.prepare, [image, video, prompt, align_frame, frame_count, target_fps, augment_seed,
                                         state], [preview, state, prompt, pose_info], api_name="prepare",
                           concurrency_limit=1, concurrency_id=QUEUE).then(
            lambda: gr.update(interactive=True), None, generate_button, queue=False, api_visibility="private")
        generate_button.click(app.generate, [*settings, state], [result, result_info, gallery], api_name="generate",
                              concurrency_limit=1, concurrency_id=QUEUE)
        cancel_button.click(app.cancel, None, result_info, api_name="cancel", queue=False)
        # only a user's pick (.input), not Reuse settings filling the controls, clears the other fields
        cache_kind.input(app.cache_kind_chosen, [cache_kind, cache_threshold, cache_ratios, cache_interval],
                         [cache_threshold, cache_ratios, cache_interval], queue=False, api_visibility="private")

        def on_select(event: gr.SelectData):
            return event.index

        gallery.select(on_select, None, selected, queue=False, api_visibility="private")
        reuse_button.click(app.reuse_settings, selected, settings, queue=False, api_visibility="private")
        refresh_button.click(app.gallery, None, gallery, queue=False, api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    demo.steadydancer = app  # tests and launch() reach the app's state through the Blocks
    return demo


def auth_warning(host: str, share: bool, auth: tuple[str, str] | None) -> str | None:
    """The line to warn with when the page is reachable beyond this machine without a password."""
    if auth is not None or not (share or host not in ("127.0.0.1", "localhost", "::1")):
        return None
    where = "a public gradio.live link (--share)" if share else f"{host} (the network)"
    return (f"serving on {where} without --auth: anyone who reaches it can run jobs on this machine and see "
            "the gallery; pass --auth USER:PASS")


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True, auth: tuple[str, str] | None = None) -> str:
    """Serve ``demo``; returns its local URL (``block`` False: return at once, serving in a thread).

    Nothing of the work or output folder is served directly (no ``allowed_paths``): the browser
    gets cached copies of finished videos only. ``auth``: (user, password) asked by the page.
    A port in use is one line (InputError)."""
    warning = auth_warning(host, share, auth)
    if warning:
        log.warning(warning)
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                                quiet=not block, auth=auth)
    except OSError as exc:
        raise InputError(f"--port {port}: cannot serve on {host}:{port} ({one_line(exc)}); "
                         "pick another port") from None
    return url

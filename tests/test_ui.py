"""`steadydancer ui`: the Gradio app served in-process on localhost, driven by gradio_client (the
pose stage and a generation on the tiny checkpoint), its queue, its errors, and a real headless
Chromium loading the page (skipped when no `chromium` binary is on PATH)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the app
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from test_pipeline_support import tiny_checkpoint  # noqa: E402

from steadydancer.cli.demo import demo_assets  # noqa: E402
from steadydancer.cli.main import main  # noqa: E402
from steadydancer.pose.video import read_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# generate's inputs: prompt, negative prompt, frames, size (a pixel area: seconds on a CPU), steps, text
# and pose guidance, pose CFG window, solver, seed (text), long-video window, overlap,
# mode, LoRA files (the picker: only with --lora_dir), LoRA strengths, step cache, cache threshold (text),
# cache interval (text), MagCache ratios (a name the UI offers), VAE tiling
SETTINGS = ["a dancer", "", 5, "6144", 2, 5.0, 1.0, 0.1, 0.4, "unipc", "0", 81, 16, "context", [], "",
            "none", "", "", "none", False]
SEED = SETTINGS.index("0")
CACHE, THRESHOLD, INTERVAL, RATIOS, TILING = range(16, 21)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from steadydancer.ui.app import build_app, launch

    demo = build_app(tiny_checkpoint(), work_dir=tmp_path_factory.mktemp("ui"), device="cpu")
    url = launch(demo, port=_free_port(), block=False)
    yield demo, url
    demo.close()


def _client(url: str):
    return gradio_client.Client(url, verbose=False)  # one client: one session


@pytest.fixture(scope="module")
def client(served):
    return _client(served[1])


def _prepare(client, count: int, submit: bool = False):
    assets = demo_assets()
    call = client.submit if submit else client.predict
    return call(gradio_client.handle_file(str(assets / "ref_image.png")),
                gradio_client.handle_file(str(assets / "driving_video.mp4")), "a dancer", 0, count, 0, 0,
                api_name="/prepare")


@pytest.fixture(scope="module")
def prepared(client):
    return _prepare(client, 5)


def _folder(demo, client) -> Path:
    """The session's prepared folder, read on the server side (the client never sees it)."""
    folders = sorted(demo.steadydancer.work_dir.glob("poses-*"), key=lambda p: p.stat().st_mtime)
    assert folders
    return folders[-1]


def test_api_lists_prepare_and_generate_without_server_paths(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/prepare", "/generate", "/cancel"} <= set(endpoints)
    names = [p["parameter_name"] for p in endpoints["/generate"]["parameters"]]
    # the prepared folder is session state on the server: not a parameter a client could set
    assert names[0] == "prompt" and "folder" not in names and "steps" in names and "seed" in names
    assert not any(name.startswith("/lambda") for name in endpoints)


def test_end_to_end_prepare_then_generate(served, client, prepared):
    demo = served[0]
    preview, prompt, info = prepared
    work_dir = str(demo.steadydancer.work_dir)
    assert Path(preview).name == "all.mp4" and len(read_video(preview)[0]) == 5
    assert work_dir not in preview and work_dir not in info and prompt == "a dancer"
    assert info.startswith("5 pose frames from frame 0") and "0.67x" in info  # a 24 fps dance at 16 fps
    video, line, gallery = client.predict(*SETTINGS, api_name="/generate")
    frames, fps = read_video(video)
    # the 384x672 sample at a 6144-pixel area: latent 12x6 -> 96x48 pixels
    assert len(frames) == 5 and fps == 16 and frames[0].shape == (96, 48, 3)
    assert line.startswith("5 frames, 48x96, 16 fps, seed 0") and work_dir not in video
    # the finished video and its settings are in the output folder, and in the gallery
    saved = demo.steadydancer.videos()[0]
    sidecar = json.loads(saved.with_suffix(".json").read_text())
    assert sidecar["settings"]["seed"] == "0" and sidecar["settings"]["steps"] == 2
    assert len(gallery) >= 1 and gallery[0]["caption"] == saved.name


def test_generate_uses_the_latest_poses_of_its_session(served, client):
    """The stale-poses race: 9 frames prepared, 5 asked, Prepare, Generate at once -> 5 frames."""
    assert _prepare(client, 9)[2].startswith("9 pose frames")
    first = _folder(served[0], client)
    assert len(list((first / "positive").glob("*.jpg"))) == 9
    job = _prepare(client, 5, submit=True)
    deadline = time.monotonic() + 60
    while job.status().code.name not in ("IN_QUEUE", "SENDING_DATA", "PROCESSING", "PROGRESS", "FINISHED"):
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.01)  # the Prepare request has reached the server's queue (as a click would)
    settings = list(SETTINGS)
    settings[2] = 0  # frames: as many as prepared
    video, line, _ = client.predict(*settings, api_name="/generate")
    assert job.result(timeout=120)[2].startswith("5 pose frames")
    assert len(read_video(video)[0]) == 5 and line.startswith("5 frames")
    assert not first.exists()  # the session's previous poses were removed


def test_generate_refuses_while_its_session_prepares(served, client, prepared):
    app = served[0].steadydancer
    app._preparing.add(client.session_hash)
    try:
        with pytest.raises(gradio_client.exceptions.AppError, match="being prepared"):
            client.predict(*SETTINGS, api_name="/generate")
    finally:
        app._preparing.discard(client.session_hash)


def test_a_second_session_cannot_use_or_fetch_the_first_ones_files(served, client, prepared):
    import httpx

    demo, url = served
    other = _client(url)
    with pytest.raises(gradio_client.exceptions.AppError, match="prepare the poses first"):
        other.predict(*SETTINGS, api_name="/generate")
    folder = _folder(demo, client)
    assert len(folder.name) == len("poses-") + 32  # a random name, not a counter and a time
    for private in (folder / "ref_image.png", folder / "keypoints.json", folder / "positive" / "0000.jpg",
                    folder / "all.mp4"):
        assert private.is_file()
        response = httpx.get(f"{url.rstrip('/')}/gradio_api/file={private}")
        assert response.status_code == 403, private


def test_a_random_seed_from_the_page_reproduces_its_video(client, prepared):
    settings = list(SETTINGS)
    settings[SEED] = "-1"
    video, line, _ = client.predict(*settings, api_name="/generate")
    seed = line.split("seed ")[1].split(",")[0]
    assert 0 <= int(seed) < 2**53 and str(int(seed)) == seed
    settings[SEED] = seed
    again, line2, _ = client.predict(*settings, api_name="/generate")
    assert f"seed {seed}," in line2
    np.testing.assert_array_equal(np.stack(read_video(video)[0]), np.stack(read_video(again)[0]))


@pytest.mark.parametrize("index, value, message", [
    (2, 8, "num_frames 8: must be 4n+1 (e.g. 17, 33, 49, 81)"),
    (2, None, "frames: enter a number"),
    (SEED, str(2**70), f"seed {2**70}: expected -1 (random) or 0 to 2**64 - 1"),
    (SEED, "abc", "seed 'abc': expected a whole number (-1: random)"),
    (3, "10000000000", "size 10000000000: a pixel area larger than the largest official size (921600 pixels); "
                       "start the UI with --allow_any_size to allow it"),
    (5, None, "text guidance: enter a number"),
])
def test_input_errors_are_one_line_in_the_page(client, prepared, index, value, message):
    bad = list(SETTINGS)
    bad[index] = value
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(*bad, api_name="/generate")
    assert str(info.value) == message


def test_a_text_file_as_the_image_is_one_line(client, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(gradio_client.handle_file(str(text)),
                       gradio_client.handle_file(str(demo_assets() / "driving_video.mp4")), "", 0, 5, 0, 0,
                       api_name="/prepare")
    message = str(info.value)
    assert message and "\n" not in message and message != "Error"


def test_reuse_settings_loads_a_past_videos_settings(served, client, prepared):
    from steadydancer.ui.app import SETTING_ORDER

    app = served[0].steadydancer
    settings = list(SETTINGS)
    settings[SEED], settings[4] = "1234", 3
    client.predict(*settings, api_name="/generate")
    values = dict(zip(SETTING_ORDER, app.reuse_settings(0)))  # the newest video
    assert values["seed"] == "1234" and values["steps"] == 3 and values["size"] == "6144"
    with pytest.raises(gr.Error, match="select a video"):
        app.reuse_settings(None)


def _speed(settings: list, kind: str, threshold: str = "", ratios: str = "none", tiling: bool = False,
           interval: str = "") -> list:
    settings = list(settings)
    settings[CACHE], settings[THRESHOLD], settings[RATIOS], settings[TILING] = kind, threshold, ratios, tiling
    settings[INTERVAL] = interval
    return settings


def test_speed_controls_reach_the_pipeline_the_status_line_and_reuse(served, client, prepared):
    """fbcache at a threshold that skips: the run's memory options, the skipped forwards in the
    line under the video, the sidecar; Reuse settings brings them back; the next run without a
    cache has none (the controls, not the previous run, decide)."""
    from steadydancer.ui.app import SETTING_ORDER

    app = served[0].steadydancer
    pipeline = app.pipe.pipeline
    _, line, _ = client.predict(*_speed(SETTINGS, "fbcache", "1e9", tiling=True), api_name="/generate")
    memory = pipeline.memory
    assert (memory.step_cache, memory.cache_threshold, memory.cache_ratios, memory.vae_tiling) == \
        ("fbcache", 1e9, None, True)
    assert pipeline.vae().tiling  # reloaded tiled
    # 2 steps, pose CFG window (0.1, 0.4) empty at 2 steps: 2 passes x 2 steps; each pass's first forward runs
    assert line.startswith("5 frames, 48x96, 16 fps, seed 0") and line.endswith(
        ", step cache: 2 of 4 DiT forwards skipped")
    saved = app.videos()[0]
    settings = json.loads(saved.with_suffix(".json").read_text())["settings"]
    assert {k: settings[k] for k in ("step_cache", "cache_threshold", "cache_ratios", "vae_tiling")} == \
        {"step_cache": "fbcache", "cache_threshold": 1e9, "cache_ratios": "none", "vae_tiling": True}
    assert settings["step_cache_summary"] == "step cache: 2 of 4 DiT forwards skipped"

    _, plain, _ = client.predict(*SETTINGS, api_name="/generate")
    assert "step cache" not in plain and pipeline.memory.step_cache == "none" and not pipeline.memory.vae_tiling
    assert not pipeline.vae().tiling
    values = dict(zip(SETTING_ORDER, app.reuse_settings(1)))  # the fbcache video, now second newest
    assert (values["step_cache"], values["cache_threshold"], values["cache_ratios"], values["vae_tiling"]) == \
        ("fbcache", "1000000000.0", "none", True)
    reused = [values[key] for key in SETTING_ORDER]
    _, again, _ = client.predict(*reused, api_name="/generate")  # the reused settings run the same cache
    assert again.endswith(", step cache: 2 of 4 DiT forwards skipped") and pipeline.memory.cache_threshold == 1e9


def test_magcache_with_a_published_ratios_file_by_name(served, client, prepared):
    from steadydancer.models.step_cache import PUBLISHED_RATIOS

    app = served[0].steadydancer
    assert app.ratio_choices() == ["none", "wan21_i2v_14b_480p.json", "wan21_i2v_14b_720p.json"]
    _, line, _ = client.predict(*_speed(SETTINGS, "magcache", "0", "wan21_i2v_14b_480p.json"),
                                api_name="/generate")
    assert line.endswith(", step cache: 0 of 4 DiT forwards skipped")  # threshold 0 skips nothing
    assert app.pipe.pipeline.memory.cache_ratios == PUBLISHED_RATIOS / "wan21_i2v_14b_480p.json"


@pytest.mark.parametrize("speed, message", [
    (("fbcache", "abc"), "cache threshold 'abc': expected a number >= 0 (empty: the kind's default)"),
    (("fbcache", "-1"), "cache threshold: expected a number >= 0, got -1.0"),
    (("fbcache", "nan"), "cache threshold: expected a number >= 0, got nan"),
    # the command line's own check, its flags named as the page's fields
    (("none", "0.1"), ("none", 0.1, None)),
    (("none", "", "wan21_i2v_14b_480p.json"), ("none", None, "x.json")),
    (("fbcache", "", "wan21_i2v_14b_480p.json"), "MagCache ratios is for step cache magcache, not fbcache"),
    (("fbcache", "", "none", False, "3"), "cache interval is for step cache taylorseer, not fbcache"),
    (("taylorseer", "", "none", False, "abc"), "cache interval 'abc': expected a whole number of steps >= 1 "
                                                "(empty: the default, 5)"),
    (("taylorseer", "", "none", False, "0"), "cache interval: expected a whole number of steps >= 1, got 0"),
    (("magcache", "0.1"), "MagCache ratios: choose a file for step cache magcache (the published Wan 2.1 I2V "
                          "14B ratios are a starting point; the file of `steadydancer calibrate-cache`, given "
                          "with --cache_ratios at launch, fits this checkpoint)"),
])
def test_bad_speed_settings_are_one_line_naming_the_field(served, client, prepared, speed, message):
    from steadydancer.errors import InputError
    from steadydancer.models.step_cache import check_step_cache_options

    if isinstance(message, tuple):  # the CLI's message for these flags, e.g. "--cache_threshold needs ..."
        with pytest.raises(InputError) as cli:
            check_step_cache_options(*message)
        assert str(cli.value).startswith(("--cache_threshold needs --step_cache magcache",
                                          "--cache_ratios needs --step_cache magcache"))
        message = (str(cli.value).replace("--step_cache", "step cache").replace("--cache_threshold", "cache threshold")
                   .replace("--cache_ratios", "MagCache ratios"))
        assert "--" not in message
    before = served[0].steadydancer.pipe.pipeline.memory
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(*_speed(SETTINGS, *speed), api_name="/generate")
    assert str(info.value) == message
    assert served[0].steadydancer.pipe.pipeline.memory == before  # a refused setting changes nothing


def test_taylorseer_interval_reaches_the_pipeline_and_reuse(served, client, prepared):
    from steadydancer.ui.app import SETTING_ORDER

    app = served[0].steadydancer
    _, line, _ = client.predict(*_speed(SETTINGS, "taylorseer", interval="1"), api_name="/generate")
    assert line.endswith(", step cache: 0 of 4 DiT forwards skipped")  # a full forward every step
    assert (app.pipe.pipeline.memory.step_cache, app.pipe.pipeline.memory.cache_interval) == ("taylorseer", 1)
    saved = json.loads(app.videos()[0].with_suffix(".json").read_text())["settings"]
    assert saved["cache_interval"] == 1
    values = dict(zip(SETTING_ORDER, app.reuse_settings(0)))
    assert (values["step_cache"], values["cache_interval"]) == ("taylorseer", "1")


def test_ratios_are_chosen_by_name_never_by_a_server_path(served, client, prepared, tmp_path):
    from steadydancer.errors import InputError

    app = served[0].steadydancer
    secret = tmp_path / "ratios.json"
    secret.write_text("{}")
    for name in (str(secret), "../../configs/magcache/wan21_i2v_14b_480p.json"):
        with pytest.raises(InputError, match="not a file this UI offers"):
            app.use_speed_settings("magcache", "", name, False)
        with pytest.raises(gradio_client.exceptions.AppError) as info:  # the page's own choice check, or ours
            client.predict(*_speed(SETTINGS, "magcache", "", name), api_name="/generate")
        assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value).replace(name, "")


def test_launch_flags_are_the_speed_controls_defaults(tmp_path):
    from steadydancer.models.step_cache import PUBLISHED_RATIOS, write_cache_ratios
    from steadydancer.ui.app import DancerApp, build_app

    own = write_cache_ratios(tmp_path / "mine.json", {"cond": [1.0, 0.98], "uncond_text": [1.0, 0.97]}, steps=2)
    demo = build_app(tiny_checkpoint(), work_dir=tmp_path / "work", device="cpu", step_cache="magcache",
                     cache_ratios=own, cache_threshold=0.25, vae_tiling=True)
    app = demo.steadydancer
    assert app.ratio_choices() == ["none", "mine.json (--cache_ratios)", "wan21_i2v_14b_480p.json",
                                   "wan21_i2v_14b_720p.json"]
    controls = {block.label: block.value for block in demo.blocks.values()
                if getattr(block, "label", None) in ("step cache", "cache threshold", "MagCache ratios", "VAE tiling")}
    assert controls == {"step cache": "magcache", "cache threshold": "0.25",
                        "MagCache ratios": "mine.json (--cache_ratios)", "VAE tiling": True}
    # picking a kind in the page clears what it does not take, magcache offers the launch file again
    assert app.cache_kind_chosen("none", "0.25", "mine.json (--cache_ratios)", "3") == ("", "none", "")
    assert app.cache_kind_chosen("fbcache", "0.25", "mine.json (--cache_ratios)") == ("0.25", "none", "")
    assert app.cache_kind_chosen("magcache", "0.25", "none") == ("0.25", "mine.json (--cache_ratios)", "")
    assert app.cache_kind_chosen("magcache", "", "wan21_i2v_14b_480p.json") == ("", "wan21_i2v_14b_480p.json", "")
    assert app.cache_kind_chosen("taylorseer", "0.25", "wan21_i2v_14b_480p.json", "3") == ("", "none", "3")
    assert app.cache_kind_chosen("another", "0.25", "wan21_i2v_14b_480p.json") == ("", "none", "")  # takes none
    assert app.use_speed_settings("magcache", "", "mine.json (--cache_ratios)", False)["cache_ratios"] == \
        "mine.json (--cache_ratios)"
    assert app.pipe.pipeline.memory.cache_ratios == own.resolve()
    # a published file given at launch is offered once, by its published name
    published = DancerApp(tiny_checkpoint(), tmp_path / "work2", device="cpu", step_cache="magcache",
                          cache_ratios=PUBLISHED_RATIOS / "wan21_i2v_14b_720p.json")
    assert published.launch_speed_settings()["cache_ratios"] == "wan21_i2v_14b_720p.json"
    assert published.ratio_choices() == ["none", "wan21_i2v_14b_480p.json", "wan21_i2v_14b_720p.json"]


def test_a_step_cache_with_batched_guidance_is_refused_as_the_cli_refuses_it(tmp_path):
    from steadydancer.errors import InputError
    from steadydancer.ui.app import DancerApp

    app = DancerApp(tiny_checkpoint(), tmp_path / "work", device="cpu", batch_guidance=True)
    with pytest.raises(InputError) as info:
        app.use_speed_settings("fbcache", "", "none", False)
    assert str(info.value) == ("step cache: not with batched guidance (the UI was started with --batch_guidance); "
                               "choose none")
    assert app.pipe.pipeline.memory.step_cache == "none"
    assert app.use_speed_settings("none", "", "none", True)["vae_tiling"] is True  # tiling alone is fine


def test_cache_reports_of_concurrent_jobs_do_not_mix(monkeypatch):
    """Two jobs in two threads at once, each recording its own counts (the UI's worker threads)."""
    import threading

    from steadydancer.models import step_cache
    from steadydancer.sampling.batched import make_passes

    class FakeCache:  # stands for StepCache: counts set by the thread that runs it
        def __init__(self, model, options, steps):
            self.forwards, self.skipped = steps, int(options.threshold)

        def remove(self):
            pass

        def summary(self):
            return "fake"

    monkeypatch.setattr(step_cache, "StepCache", FakeCache)
    both_open, results = threading.Barrier(2), {}

    def job(name: str, skipped: int, runs: int) -> None:
        with step_cache.recording_step_cache() as report:
            both_open.wait()
            for _ in range(runs):  # e.g. the segments of a chain long video
                with step_cache.step_cache_session(torch_module(), step_cache.StepCacheOptions("fbcache", skipped),
                                                   10, make_passes()):
                    both_open.wait()
        results[name] = report.summary()

    def torch_module():
        import torch

        return torch.nn.Identity()

    threads = [threading.Thread(target=job, args=("a", 1, 2)), threading.Thread(target=job, args=("b", 5, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"a": "step cache: 2 of 20 DiT forwards skipped", "b": "step cache: 10 of 20 DiT forwards skipped"}
    with step_cache.recording_step_cache() as idle:
        pass
    assert idle.summary() is None  # no cache ran: no line


def test_lora_picker_offers_the_folders_files_and_reloads_the_dit(tmp_path):
    import json as _json

    import torch
    from safetensors.torch import save_file

    from steadydancer.errors import InputError
    from steadydancer.ui.app import DancerApp

    dim = _json.loads((tiny_checkpoint() / "config.json").read_text())["dim"]
    loras = tmp_path / "loras"
    loras.mkdir()
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(2, dim),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(dim, 2)}, str(loras / "style.safetensors"))
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(2, dim + 1),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(dim, 2)}, str(loras / "wrong.safetensors"))
    (loras / "notes.txt").write_text("not offered")
    app = DancerApp(tiny_checkpoint(), tmp_path / "work", lora_dir=loras, device="cpu")
    assert app.lora_files() == ["style.safetensors", "wrong.safetensors"]
    pipeline = app.pipe.pipeline
    pipeline._dit = object()  # stands for a loaded DiT
    assert app.use_loras(["style.safetensors"], "0.5") == [("style.safetensors", 0.5)]
    assert pipeline.memory.loras == [(loras / "style.safetensors", 0.5)] and pipeline._dit is None
    pipeline._dit = loaded = object()
    app.use_loras(["style.safetensors"], "0.5")  # the same choice: the DiT stays
    assert pipeline._dit is loaded
    for names, strengths, words in ((["../x.safetensors"], "", "not a .safetensors file in --lora_dir"),
                                    (["style.safetensors"], "a", "expected numbers"),
                                    (["style.safetensors"], "1,2", "one per chosen LoRA"),
                                    (["wrong.safetensors"], "", "LoRA")):
        with pytest.raises(InputError, match=words):
            app.use_loras(names, strengths)
    assert pipeline.memory.loras == [(loras / "style.safetensors", 0.5)]  # a refused choice changes nothing
    assert app.use_loras([], "") == [] and pipeline.memory.loras == []


def test_cancel_stops_between_steps(served, prepared, monkeypatch):
    app = served[0].steadydancer
    state = {"folder": str(_folder(served[0], None))}
    calls = []

    def fake_call(self, prepared, callback_on_step_end=None, **kwargs):
        callback_on_step_end(self, 0, 999.0, {})
        calls.append(0)
        app.cancel(None)  # the Cancel button, pressed during step 1
        callback_on_step_end(self, 1, 500.0, {})
        calls.append(1)

    monkeypatch.setattr(type(app.pipe), "__call__", fake_call)
    with pytest.raises(gr.Error, match="cancelled"):
        app.generate(*SETTINGS, state, request=None, progress=lambda *a, **k: None)
    assert calls == [0]


def test_the_driving_videos_sound_at_real_timing(served, tmp_path):
    """Poses prepared at 16 fps (real timing): the video carries the driving video's sound; at the
    official every-frame rate (24 fps here) it does not (it would drift)."""
    import shutil as _shutil

    from test_audio import _tone_video

    from steadydancer.pipeline.audio import add_audio, has_audio

    driving = tmp_path / "dance.mp4"
    _shutil.copyfile(demo_assets() / "driving_video.mp4", driving)
    assert add_audio(driving, _tone_video(tmp_path / "tone.mp4"))
    client = _client(served[1])
    assets = demo_assets()
    _, _, info = client.predict(gradio_client.handle_file(str(assets / "ref_image.png")),
                                gradio_client.handle_file(str(driving)), "a dancer", 0, 5, 16, 0,
                                api_name="/prepare")
    assert "at 16 fps" in info and "0.67x" not in info
    client.predict(*SETTINGS, api_name="/generate")
    assert has_audio(served[0].steadydancer.videos()[0])


def test_one_job_at_a_time_and_models_loaded_once(served, client, prepared, monkeypatch):
    demo, _ = served
    app = demo.steadydancer
    pipeline = app.pipe.pipeline
    dit = pipeline.dit()  # loaded by an earlier job or now; it must stay the same object
    intervals = []
    original = type(app.pipe).__call__

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        out = original(self, *args, **kwargs)
        intervals.append((start, time.perf_counter()))
        return out

    monkeypatch.setattr(type(app.pipe), "__call__", timed)
    jobs = [client.submit(*SETTINGS, api_name="/generate") for _ in range(2)]
    results = [job.result(timeout=120) for job in jobs]
    assert all(Path(video).is_file() for video, _, _ in results)
    (a0, a1), (b0, b1) = sorted(intervals)
    assert b0 >= a1  # the second job started after the first had finished
    assert pipeline.dit() is dit and app.pipe.pipeline is pipeline


def test_port_in_use_is_one_line():
    from steadydancer.errors import InputError
    from steadydancer.ui.app import launch

    with socket.socket() as busy, gr.Blocks() as page:
        gr.Markdown("x")
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError) as info:
            launch(page, port=port, block=False)
    assert str(info.value).startswith(f"--port {port}: cannot serve on 127.0.0.1:{port}")
    assert "\n" not in str(info.value)


def test_auth_flag_and_the_warning_without_it():
    from steadydancer.cli.ui import parse_auth
    from steadydancer.errors import InputError
    from steadydancer.ui.app import auth_warning

    assert parse_auth("ann:secret:x") == ("ann", "secret:x") and parse_auth(None) is None
    with pytest.raises(InputError, match="expected USER:PASS"):
        parse_auth("ann")
    assert auth_warning("127.0.0.1", False, None) is None
    assert "without --auth" in auth_warning("0.0.0.0", False, None)
    assert "--share" in auth_warning("127.0.0.1", True, None)
    assert auth_warning("0.0.0.0", True, ("a", "b")) is None


def test_ui_without_gradio_says_how_to_install(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["ui", "--ckpt_dir", str(tiny_checkpoint())]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'error: the web UI needs gradio: pip install -e ".[ui]"'


def test_headless_chromium_renders_the_page(served, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install -y chromium)")
    shot = tmp_path / "ui.png"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,1600",
                             "--virtual-time-budget=10000", served[1]],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (1600, 1280, 3)
    # not blank: the rendered app has text, inputs and the orange Generate button
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    orange = (pixels[..., 0] > 220) & (pixels[..., 1] > 90) & (pixels[..., 1] < 150) & (pixels[..., 2] < 60)
    assert orange.sum() > 1000
    artifacts = os.environ.get("TEST_ARTIFACTS")
    if artifacts:
        target = Path(artifacts) if Path(artifacts).is_absolute() else REPO / artifacts
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target / "ui.png")

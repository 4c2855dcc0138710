"""`steadydancer ui`: the Gradio app served in-process on localhost, driven by gradio_client (the
pose stage and a generation on the tiny checkpoint), its queue, its errors, and a real headless
Chromium loading the page (skipped when no `chromium` binary is on PATH)."""

from __future__ import annotations

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
# generate's inputs after the folder: prompt, negative prompt, frames, size (a pixel area: seconds on
# a CPU), steps, text and pose guidance, pose CFG window, solver, seed
SETTINGS = ["a dancer", "", 5, "6144", 2, 5.0, 1.0, 0.1, 0.4, "unipc", 0]


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


@pytest.fixture(scope="module")
def client(served):
    return gradio_client.Client(served[1], verbose=False)


@pytest.fixture(scope="module")
def prepared(client):
    assets = demo_assets()
    return client.predict(gradio_client.handle_file(str(assets / "ref_image.png")),
                          gradio_client.handle_file(str(assets / "driving_video.mp4")),
                          "a dancer", 0, 5, 0, 0, api_name="/prepare")


def test_api_lists_prepare_and_generate(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/prepare", "/generate"} <= set(endpoints)
    names = [p["parameter_name"] for p in endpoints["/generate"]["parameters"]]
    assert names[:2] == ["folder", "prompt"] and "steps" in names and "seed" in names


def test_end_to_end_prepare_then_generate(client, prepared):
    preview, folder, prompt, info = prepared
    assert Path(preview).name == "all.mp4" and len(read_video(preview)[0]) == 5
    assert (Path(folder) / "positive" / "0004.jpg").is_file() and prompt == "a dancer"
    assert info.startswith("5 pose frames from frame 0")
    video, line = client.predict(folder, *SETTINGS, api_name="/generate")
    frames, fps = read_video(video)
    # the 384x672 sample at a 6144-pixel area: latent 12x6 -> 96x48 pixels
    assert len(frames) == 5 and fps == 16 and frames[0].shape == (96, 48, 3)
    assert line.startswith("5 frames, 48x96, 16 fps, seed 0")


def test_input_errors_are_one_line_in_the_page(client, prepared):
    folder = prepared[1]
    bad = list(SETTINGS)
    bad[2] = 8
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(folder, *bad, api_name="/generate")
    assert str(info.value) == "num_frames 8: must be 4n+1 (e.g. 17, 33, 49, 81)"
    # only folders this app prepared are accepted (a client cannot point it elsewhere)
    with pytest.raises(gradio_client.exceptions.AppError, match="prepare the poses first"):
        client.predict("/etc", *SETTINGS, api_name="/generate")


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
    jobs = [client.submit(prepared[1], *SETTINGS, api_name="/generate") for _ in range(2)]
    results = [job.result(timeout=120) for job in jobs]
    assert all(Path(video).is_file() for video, _ in results)
    (a0, a1), (b0, b1) = sorted(intervals)
    assert b0 >= a1  # the second job started after the first had finished
    assert pipeline.dit() is dit and app.pipe.pipeline is pipeline


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

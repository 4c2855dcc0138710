"""Screenshot of `steadydancer ui` after two runs, for the README (docs/images/ui.png).

Serves the app on a tiny random checkpoint (the video is noise; the page is the real one), then
drives headless Chromium over the DevTools protocol on a pipe (no extra Python package): upload
the bundled sample, click *Prepare poses*, wait for the preview, click *Generate* twice, wait for
the result and the two videos in the gallery of past videos, screenshot. Needs gradio and a `chromium` binary (Debian: apt-get install -y chromium).

    python scripts/ui_screenshot.py docs/images/ui.png [--width 1280 --height 1500 --max_kb 300]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _as_fds_3_and_4(read_end: int, write_end: int) -> None:
    # copies first, so that neither end is overwritten when it already is fd 3 or 4
    read_copy, write_copy = os.dup(read_end), os.dup(write_end)
    os.dup2(read_copy, 3)
    os.dup2(write_copy, 4)


class DevTools:
    """Chrome DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out; NUL-separated JSON)."""

    def __init__(self, browser: str, width: int, height: int) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        self.proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp()}"],
            # fds 3 and 4 in the child; kept open by listing them (close_fds runs after preexec_fn)
            pass_fds=sorted({to_browser_r, from_browser_w, 3, 4}), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=lambda: _as_fds_3_and_4(to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, session: bool = True, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed the pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def click(tools: DevTools, label: str) -> None:
    found = tools.evaluate(f"""(() => {{ const b = [...document.querySelectorAll('button')]
        .find(e => e.innerText.trim() === {json.dumps(label)}); if (b) b.click(); return !!b; }})()""")
    if not found:
        raise RuntimeError(f"no button {label!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1900)
    parser.add_argument("--max_kb", type=int, default=300, help="downscale until the PNG is this small")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("error: no chromium binary on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2

    from PIL import Image

    from steadydancer.cli.demo import demo_assets
    from steadydancer.pipeline.tiny import write_tiny_checkpoint
    from steadydancer.ui.app import build_app, launch

    work = Path(tempfile.mkdtemp(prefix="sd-ui-shot-"))
    ckpt = write_tiny_checkpoint(work / "tiny_ckpt")
    # small settings so that the tiny checkpoint answers in seconds on a CPU
    demo = build_app(ckpt, work_dir=work / "ui", device="cpu",
                     defaults={"frame_count": 17, "size": "24576", "steps": 4, "seed": 0})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = launch(demo, port=port, block=False)
    assets = demo_assets()
    tools = DevTools(browser, args.width, args.height)
    try:
        target = tools.send("Target.createTarget", session=False, url=url)["targetId"]
        tools.session = tools.send("Target.attachToTarget", session=False, targetId=target, flatten=True)["sessionId"]
        tools.send("Runtime.enable")
        tools.send("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                   deviceScaleFactor=1, mobile=False)
        tools.wait_for("document.querySelectorAll('input[type=file]').length >= 2", 60, "the page")
        document = tools.send("DOM.getDocument", depth=-1, pierce=True)["root"]["nodeId"]
        inputs = tools.send("DOM.querySelectorAll", nodeId=document, selector="input[type=file]")["nodeIds"]
        tools.send("DOM.setFileInputFiles", nodeId=inputs[0], files=[str(assets / "ref_image.png")])
        tools.send("DOM.setFileInputFiles", nodeId=inputs[1], files=[str(assets / "driving_video.mp4")])
        tools.wait_for("document.querySelectorAll('video').length >= 1 && "
                       "document.querySelectorAll('img').length >= 1", 60, "the uploads")
        prompt = (assets / "prompt.txt").read_text().strip()
        tools.evaluate(f"""(() => {{ const t = document.querySelector('textarea');
            t.value = {json.dumps(prompt)}; t.dispatchEvent(new Event('input', {{bubbles: true}})); }})()""")
        click(tools, "Prepare poses")
        tools.wait_for("document.body.innerText.includes('pose frames from frame')", 180, "the pose stage")
        click(tools, "Generate")
        tools.wait_for("document.body.innerText.includes('fps, seed')", 300, "the generation")
        videos = tools.evaluate("document.querySelectorAll('video').length")
        time.sleep(1)
        click(tools, "Generate")  # a second video for the gallery
        tools.wait_for(f"document.querySelectorAll('video').length > {videos}", 300, "the second generation")
        time.sleep(3)  # let the videos show their first frames
        shot = tools.send("Page.captureScreenshot", format="png")["data"]
    finally:
        tools.close()
        demo.close()
    image = Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scale = 1.0
    while True:
        size = (int(image.width * scale), int(image.height * scale))
        small = image.resize(size, Image.Resampling.LANCZOS) if scale < 1 else image
        buffer = io.BytesIO()
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= args.max_kb * 1024 or scale < 0.3:
            break
        scale *= 0.85
    args.out.write_bytes(buffer.getvalue())
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out} ({size[0]}x{size[1]}, {buffer.tell() // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

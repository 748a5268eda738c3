"""How fast does `loopwm play` run? The demo model in a real headless Chromium, measured from the page.

    python scripts/play_bench.py --run runs/demo --out results/play      # about 1.5 minutes

Starts `loopwm play RUN --port 0`, opens the page in the system Chromium (Debian's `chromium`),
and for each asked step rate lets the page run under a scripted policy, then reads what the page
itself measured: frames drawn per second, the server's imagined steps per second (model time only)
and loop iterations per step. Writes bench.json and a screenshot (play.png) under --out.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tyro

from loopwm.utils import atomic_write_json


@dataclass
class PlayBenchConfig:
    """Frame rate of the play page for one run."""

    run: str = "runs/demo"
    """Run to play (the demo's, by default)."""
    out: str = "results/play"
    """Folder for bench.json and play.png."""
    rates: list[float] = field(default_factory=lambda: [30.0, 60.0])
    """Step rates to ask for (60 is the server's cap)."""
    seconds: float = 20.0
    """Measured seconds per rate (after a few seconds of warm-up)."""
    policy: str = "random"
    """Scripted policy driving both worlds."""
    chromium: str = ""
    """Chromium binary (empty: chromium on PATH)."""


def main(cfg: PlayBenchConfig) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = cfg.chromium or shutil.which("chromium")
    if not chromium:
        raise SystemExit("no Chromium: apt-get install chromium (or pass --chromium PATH)")
    server = subprocess.Popen([sys.executable, "-m", "loopwm.cli", "play", cfg.run, "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    url = None
    while url is None and server.poll() is None:
        match = re.search(r"http://\S+:\d+/", server.stdout.readline())
        url = match.group(0) if match else None
    if url is None:
        raise SystemExit("loopwm play did not start")
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.wait_for_function("window.loopwmPlay.frames > 0", timeout=60000)
            page.select_option("#policy", cfg.policy)
            hello = page.evaluate("window.loopwmPlay.hello")
            for rate in cfg.rates:
                page.evaluate(f"window.loopwmPlay.socket.send(JSON.stringify({{type: 'settings', rate: {rate}}}))")
                time.sleep(3.0)  # warm-up at the new rate
                start = page.evaluate("[window.loopwmPlay.frames, performance.now()]")
                sps, iterations = [], []
                t_end = time.time() + cfg.seconds
                while time.time() < t_end:
                    time.sleep(0.5)
                    last = page.evaluate("window.loopwmPlay.lastFrame")
                    if last.get("imagined_steps_per_second"):
                        sps.append(last["imagined_steps_per_second"])
                    if "token_iterations" in last:
                        iterations.append(last["token_iterations"])
                end = page.evaluate("[window.loopwmPlay.frames, performance.now()]")
                fps = (end[0] - start[0]) * 1000.0 / (end[1] - start[1])
                row = {"asked_rate": rate, "frames_per_second": fps,
                       "imagined_steps_per_second": sum(sps) / max(len(sps), 1),
                       "iterations_per_body": sum(iterations) / max(len(iterations), 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            page.click("#reset")  # a fresh episode under the same policy: the picture shows imagination, not drift
            time.sleep(2.0)
            page.screenshot(path=str(out / "play.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    import torch

    result = {"run": cfg.run, "env_id": hello["env_id"], "model": hello["model"], "settings": hello["settings"],
              "rows": rows, "torch_threads": torch.get_num_threads(), "config": asdict(cfg)}
    atomic_write_json(Path(cfg.out) / "bench.json", result)
    return result


if __name__ == "__main__":
    main(tyro.cli(PlayBenchConfig))

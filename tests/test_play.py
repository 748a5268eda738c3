"""loopwm play: the message schemas, one player's session, the web server's limits, and the page
end to end in a real headless Chromium driven by Playwright.

The browser is the system Chromium (Debian's `chromium` package; `.ci/run` installs it and sets
LOOPWM_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping). The screenshot is
kept under test-artifacts/.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from loopwm.play.protocol import (MAX_MESSAGE_BYTES, MAX_RATE, ActionMessage, ProtocolError, SettingsMessage,
                                  parse_message)
from loopwm.play.server import CLOSE_TRY_AGAIN_LATER, check_host, create_app
from loopwm.play.session import Player, PlaySession
from loopwm.utils import LoopWMError
from tests.test_cli import loopwm, trained  # noqa: F401 - the fixture is used below


@pytest.fixture(scope="module")
def player(trained):  # noqa: F811 - pytest fixture
    return Player.open(trained / "run", "cpu")


# ----- the protocol -----
def test_valid_messages_parse():
    assert isinstance(parse_message('{"type": "action", "action": [1, 0]}'), ActionMessage)
    assert parse_message('{"type": "action", "action": 3}').action == 3
    s = parse_message('{"type": "settings", "depth": 4, "rate": 20, "exit": "fixed", "running": false}')
    assert isinstance(s, SettingsMessage) and (s.depth, s.rate, s.running) == (4, 20.0, False)
    for kind in ("reset", "resync", "step"):
        assert parse_message(json.dumps({"type": kind})).type == kind


@pytest.mark.parametrize("text, says", [
    (b'{"type": "step"}', "JSON text"),
    ("x" * (MAX_MESSAGE_BYTES + 1), "too large"),
    ("{not json", "not valid JSON"),
    ('{"type": "action", "action": [NaN, 0]}', "NaN"),
    ('[1, 2]', "JSON object"),
    ('{"type": "exec", "code": "import os"}', "unknown message type"),
    ('{"type": "step", "path": "/etc/passwd"}', "Extra inputs"),
    ('{"type": "settings", "rate": 1000}', "rate"),
    ('{"type": "settings", "rate": 0}', "rate"),
    ('{"type": "settings", "depth": 0}', "depth"),
    ('{"type": "settings", "depth": "4"}', "depth"),
    ('{"type": "settings", "depth": true}', "depth"),
    ('{"type": "settings", "threshold": -1}', "threshold"),
    ('{"type": "settings", "policy": "my_module.evil"}', "policy"),
    ('{"type": "action", "action": []}', "action"),
    ('{"type": "action", "action": ["left"]}', "action"),
    ('{"type": "reset", "seed": -3}', "seed"),
])
def test_bad_messages_are_refused_with_a_reason(text, says):
    with pytest.raises(ProtocolError, match=says):
        parse_message(text)


# ----- one session -----
def test_both_worlds_start_together_and_step_through_imagine(player):
    session = PlaySession(player, seed=3)
    first = session.reset(3)
    assert first["error"] == 0.0 and first["real"] == first["imagined"]  # the same observation, the same renderer
    session.handle(SettingsMessage(type="settings", policy="random", exit="fixed", depth=2))
    frames = [session.step() for _ in range(6)]
    assert all(f["real"].startswith("data:image/png;base64,") for f in frames)
    assert len({f["imagined"] for f in frames}) == 6 and len({f["real"] for f in frames}) == 6  # both views move
    assert [f["iterations"] for f in frames] == [2] * 6
    assert all(isinstance(f["solver_iterations"], int) and isinstance(f["contacts"], int) for f in frames)
    # the imagined world is the model's own open-loop rollout under the same actions
    model = player.model
    env = player.make_env()
    obs, _ = env.reset(seed=3)
    actions = torch.as_tensor(np.stack([f["action"] for f in frames]), dtype=torch.float32)[None]  # (1, 6, 2)
    with torch.no_grad():
        _, roll = model.imagine(model.initial(model._as_entities(torch.as_tensor(obs)[None].float())), actions, 2)
    assert torch.allclose(session.imagined, roll.obs[0, -1], atol=1e-5)


def test_depth_setting_changes_the_iterations_used(player):
    session = PlaySession(player, seed=0)
    used = {}
    for depth in (1, 5):
        session.handle(SettingsMessage(type="settings", exit="fixed", depth=depth))
        used[depth] = session.step()["iterations"]
    assert used == {1: 1, 5: 5}
    session.handle(SettingsMessage(type="settings", exit="delta", threshold=1e6, depth=5))
    assert session.step()["iterations"] == 1  # a rule that always fires stops after one pass


def test_sessions_are_seeded_and_independent(player):
    a, b = PlaySession(player, seed=7), PlaySession(player, seed=7)
    for s in (a, b):
        s.handle(SettingsMessage(type="settings", policy="random"))
    fa = [a.step() for _ in range(5)]
    other = PlaySession(player, seed=8)
    other.handle(SettingsMessage(type="settings", policy="random"))
    other.step()
    fb = [b.step() for _ in range(5)]
    assert [f["imagined"] for f in fa] == [f["imagined"] for f in fb]
    assert [f["action"] for f in fa] == [f["action"] for f in fb]


def test_resync_lets_the_model_read_the_real_world(player):
    session = PlaySession(player, seed=1)
    session.handle(SettingsMessage(type="settings", policy="sweep"))
    for _ in range(8):
        frame = session.step()
    assert frame["error"] > 0
    from loopwm.play.protocol import ResyncMessage

    synced = session.handle(ResyncMessage(type="resync"))
    assert synced["error"] == 0.0 and synced["real"] == synced["imagined"]
    assert session.state.real  # the next step reads the true observation, as in teacher forcing
    session.handle(SettingsMessage(type="settings", sync_every=1))
    session.step()
    assert session.state.real


def test_session_refuses_actions_and_settings_the_world_cannot_take(player):
    session = PlaySession(player, seed=0)
    with pytest.raises(ProtocolError, match="list of 2 numbers"):
        session.handle(ActionMessage(type="action", action=[1.0, 0.0, 0.0]))
    with pytest.raises(ProtocolError, match="whole number|list of 2"):
        session.handle(ActionMessage(type="action", action=1))
    session.handle(ActionMessage(type="action", action=[5.0, -5.0]))  # clipped into the box
    assert session.step()["action"] == [1.0, -1.0]
    with pytest.raises(ProtocolError, match="exit must be one of"):
        session.handle(SettingsMessage(type="settings", exit="nonsense"))
    with pytest.raises(ProtocolError, match="depth must be at most"):
        session.handle(SettingsMessage(type="settings", depth=player.depth_max + 1))


def test_hello_describes_the_controls(player):
    hello = player.hello()
    assert hello["action"] == {"kind": "continuous", "dim": 2, "low": [-1.0, -1.0], "high": [1.0, 1.0]}
    assert hello["exits"][0] == "fixed" and "delta" in hello["exits"] and hello["model"]["looped"]
    assert hello["limits"]["max_rate"] == MAX_RATE and hello["drawn"]
    json.dumps(hello)  # plain JSON values only


def test_a_gymnasium_world_plays_with_its_own_renderer_and_discrete_keys(tmp_path):
    pytest.importorskip("pygame", reason="CartPole's renderer needs the classic extra: pip install 'loopwm[classic]'")
    from loopwm.data import CollectConfig, collect
    from loopwm.models.world_model import ModelConfig
    from loopwm.train.loop import TrainConfig, train

    collect(CollectConfig(env_id="CartPole-v1", out=str(tmp_path / "data"), episodes=4, max_episode_steps=40))
    run = train(TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "run"), steps=2, batch_size=4,
                            model=ModelConfig(d=16, n_heads=2, mu_rec=2), progress=False, device="cpu"))
    cartpole = Player.open(run, "cpu")
    hello = cartpole.hello()
    assert hello["action"] == {"kind": "discrete", "n": 2, "start": 0} and hello["drawn"]
    session = PlaySession(cartpole, seed=0)
    session.handle(ActionMessage(type="action", action=1))
    frame = session.step()
    assert frame["action"] == 1 and frame["real"].startswith("data:image/png") and frame["imagined"].startswith("data:")
    with pytest.raises(ProtocolError, match="whole number"):
        session.handle(ActionMessage(type="action", action=2))
    differ = False
    for _ in range(60):  # pushing right, CartPole ends: both worlds start the next episode together
        frame = session.step()
        differ = differ or frame["imagined"] != frame["real"]  # the prediction drawn, not the truth again
        if "episode_end" in frame:
            break
    assert differ
    assert "episode_end" in frame and session.t == 0 and frame["seed"] == 0 and session.seed == 1


def test_a_world_that_cannot_be_drawn_sends_its_observations_instead(player):
    import copy

    blind = copy.copy(player)
    blind.draw = None  # as for a vector world whose observation does not fix a picture (MuJoCo, say)
    frame = PlaySession(blind, seed=2).step()
    assert frame["imagined"] is None and not blind.hello()["drawn"]
    assert len(frame["real_values"]) == len(frame["imagined_values"]) == 4 * 7  # 4 bodies, 7 features
    assert frame["real_values"] != frame["imagined_values"]


# ----- the server -----
def test_only_loopback_binds_without_the_explicit_flag():
    for host in ("127.0.0.1", "::1", "localhost"):
        assert check_host(host, False)
    with pytest.raises(LoopWMError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    assert not check_host("0.0.0.0", True)
    with pytest.raises(LoopWMError, match="not an IP address"):
        check_host("example.com; rm -rf /", True)


def _client(player, cap=4):
    from fastapi.testclient import TestClient

    return TestClient(create_app(player, cap))


def _next(ws, kind):
    for _ in range(200):
        message = ws.receive_json()
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} message")


def test_server_serves_the_page_and_nothing_else(player):
    client = _client(player)
    assert client.get("/").status_code == 200 and "play.js" in client.get("/").text
    assert client.get("/play.js").status_code == 200
    for path in ("/../pyproject.toml", "/static/../session.py", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 404


def test_malformed_and_oversized_messages_get_an_error_and_the_session_goes_on(player):
    client = _client(player)
    with client.websocket_connect("/ws") as ws, client.websocket_connect("/ws") as other:
        assert ws.receive_json()["type"] == "hello" and other.receive_json()["type"] == "hello"
        ws.send_text(json.dumps({"type": "settings", "running": False}))
        _next(ws, "settings")
        for bad in ("{oops", "x" * 5000, json.dumps({"type": "teleport"}), json.dumps({"type": "settings", "rate": 1e9})):
            ws.send_text(bad)
            assert _next(ws, "error")["error"]
        ws.send_bytes(b"\x00\x01")
        assert "JSON text" in _next(ws, "error")["error"]
        ws.send_text(json.dumps({"type": "step"}))
        frame = _next(ws, "frame")
        assert frame["t"] >= 1 and frame["imagined"]
        assert _next(other, "frame")["imagined"]  # the other page never noticed


def test_step_requests_are_held_to_the_rate_cap(player, monkeypatch):
    from loopwm.play import server

    clock = [100.0]
    bucket = server.RateLimit(rate=10.0, burst=2.0, clock=lambda: clock[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]  # the burst, then nothing
    clock[0] += 0.11  # a little over one more step's worth of time
    assert [bucket.take(), bucket.take()] == [True, False]
    # the server's buckets on a clock that stands still: how fast this machine answers must not
    # matter (on a busy machine a real clock refilled the bucket between requests: nothing refused)
    real = server.RateLimit
    monkeypatch.setattr(server, "RateLimit", lambda rate, burst: real(rate, burst, clock=lambda: 0.0))
    with _client(player).websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "settings", "running": False}))
        _next(ws, "settings")
        for _ in range(100):
            ws.send_text(json.dumps({"type": "step"}))
        replies = [ws.receive_json() for _ in range(100)]
        refused = [r for r in replies if r["type"] == "error"]
        assert refused and "at most 60 steps a second" in refused[0]["error"]
        assert any(r["type"] == "frame" for r in replies)


def test_connections_past_the_cap_are_refused_politely(player):
    from starlette.websockets import WebSocketDisconnect

    client = _client(player, cap=1)
    with client.websocket_connect("/ws") as first:
        assert first.receive_json()["type"] == "hello"
        with client.websocket_connect("/ws") as second:
            message = second.receive_json()
            assert message["type"] == "error" and "full" in message["error"]
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_json()
            assert closed.value.code == CLOSE_TRY_AGAIN_LATER
        first.send_text(json.dumps({"type": "step"}))
        assert _next(first, "frame")["type"] == "frame"  # the first session is unharmed
    with client.websocket_connect("/ws") as again:  # its slot is free once it has gone
        assert again.receive_json()["type"] == "hello"


def test_a_world_that_cannot_be_made_is_reported_to_its_page(player, monkeypatch):
    from starlette.websockets import WebSocketDisconnect

    def broken():
        raise RuntimeError("no display for this renderer")

    monkeypatch.setattr(player, "make_env", broken)
    with _client(player).websocket_connect("/ws") as ws:
        message = ws.receive_json()
        assert message["type"] == "error" and "no display for this renderer" in message["error"]
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()


def test_play_command_refuses_a_public_address_without_the_flag(trained):  # noqa: F811 - pytest fixture
    proc = loopwm("play", str(trained / "run"), "--host", "0.0.0.0", check=False)
    assert proc.returncode == 2 and "--allow-remote" in proc.stderr


# ----- the page, end to end -----
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str:
    path = os.environ.get("LOOPWM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("LOOPWM_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here but not installed: apt-get install chromium")
        pytest.skip("no Chromium to drive (apt-get install chromium, or set LOOPWM_CHROMIUM)")
    return path


def start_server(run: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`loopwm play RUN --port 0`, and the address it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "loopwm.cli", "play", str(run), "--port", "0", "--device", "cpu",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"http://[^\s/]+:(\d+)/", line or "")
        if match:
            return proc, match.group(0)
        if proc.poll() is not None:
            raise AssertionError(f"loopwm play exited ({proc.returncode}): {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("loopwm play printed no address within 2 minutes")


@pytest.fixture(scope="module")
def page(trained):  # noqa: F811 - pytest fixture
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    proc, url = start_server(trained / "run")
    assert url.startswith("http://127.0.0.1:")  # loopback by default, on the free port it picked
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            tab = browser.new_page(viewport={"width": 1200, "height": 900})
            tab.goto(url)
            yield tab
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def frames(page) -> int:
    return page.evaluate("window.loopwmPlay.frames")


def wait_frames(page, more: int, timeout: float = 60.0) -> None:
    start = frames(page)
    page.wait_for_function(f"window.loopwmPlay.frames >= {start + more}", timeout=timeout * 1000)


def test_page_plays_both_worlds_from_the_keyboard(page):
    wait_frames(page, 5)
    real, imagined = page.get_attribute("#real", "src"), page.get_attribute("#imagined", "src")
    page.keyboard.down("ArrowRight")
    wait_frames(page, 5)
    held = page.evaluate("window.loopwmPlay.lastFrame.action")
    page.keyboard.up("ArrowRight")
    assert held[0] == 1.0  # the key pushed right in both worlds
    assert page.get_attribute("#real", "src") != real and page.get_attribute("#imagined", "src") != imagined
    wait_frames(page, 3)
    assert page.evaluate("window.loopwmPlay.lastFrame.action")[0] == 0.0  # released
    assert page.evaluate("window.loopwmPlay.errors") == []


def test_chart_receives_iterations_and_the_depth_slider_changes_them(page):
    page.select_option("#exit", "fixed")
    for depth in (1, 4):
        page.locator("#depth").fill(str(depth))
        page.wait_for_function(f"window.loopwmPlay.lastFrame.settings.depth === {depth}", timeout=30000)
        wait_frames(page, 3)
        assert page.evaluate("window.loopwmPlay.lastFrame.iterations") == depth
        assert page.inner_text("#iterations") == str(depth)
    history = page.evaluate("window.loopwmPlay.history")
    assert len(history) >= 10 and {1, 4} <= {h["iterations"] for h in history}
    assert all(isinstance(h["solver"], int) for h in history)  # the world's own effort, beside the model's


def test_readouts_report_the_frame_rate_and_a_screenshot_is_kept(page):
    wait_frames(page, 10)
    fps = float(page.inner_text("#fps"))
    steps = float(page.inner_text("#sps"))
    assert fps > 0 and steps > 0
    assert page.inner_text("#error") != "–"
    seed = page.evaluate("window.loopwmPlay.lastFrame.seed")
    page.click("#reset")  # a new episode, with the next seed
    page.wait_for_function(f"window.loopwmPlay.lastFrame.seed === {seed + 1}", timeout=30000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "play.png"))
    assert (ARTIFACTS / "play.png").stat().st_size > 10_000


def test_a_public_address_with_the_flag_serves_and_warns(trained):  # noqa: F811 - pytest fixture
    proc, url = start_server(trained / "run", "--host", "0.0.0.0", "--allow-remote")
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert url.startswith("http://0.0.0.0:") and "warning" in err and "other machines" in err

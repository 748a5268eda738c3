"""`loopwm play RUN`: a local web server where one drives the real world and the model's imagined
one side by side from the keyboard, and watches the loop iterations per step.

    loopwm play runs/demo                       # http://127.0.0.1:8000/
    loopwm play runs/demo --port 0              # any free port (the address is printed)

One WebSocket per page: the server steps both worlds at the rate the page asks for (at most
`MAX_RATE`) and sends a frame after every step; the page sends actions and settings. Each connection
has its own session (its own model state and environment); the model's weights are shared and
read only. Steps run in worker threads so one slow step never stalls the other sessions.
"""

import asyncio
import ipaddress
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from loopwm.utils import LoopWMError

STATIC = Path(__file__).parent / "static"
CLOSE_TRY_AGAIN_LATER = 1013  # WebSocket close code for "server busy"


@dataclass
class PlayConfig:
    """Play a trained world model in the browser, beside the real world."""

    run: Annotated[str, tyro.conf.Positional]
    """Run directory (or checkpoint JSON) to play."""
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback needs --allow-remote."""
    port: int = 8000
    """Port to listen on (0: a free one, printed at start)."""
    allow_remote: bool = False
    """Allow binding to a non-loopback address (anyone who can reach it can drive the model)."""
    max_connections: int = 4
    """Pages served at once; one more is told the server is full."""
    n_bodies: int = 0
    """Bodies in a built-in world (0: the run's). Entity models play on any count."""
    max_episode_steps: int = 1000
    """Steps before both worlds start a new episode."""
    frame_size: int = 128
    """Side of the drawn frames in pixels."""
    device: str = "auto"
    """Where to run: "auto" (the accelerator when present, else the CPU), "cpu", or an accelerator device
    as torch names it (type[:index]); utils.pick_device chooses."""
    threads: int = 1
    """Torch CPU threads (one step of a small model is too short to share out; 0: torch's default)."""


def check_host(host: str, allow_remote: bool) -> bool:
    """True when `host` is loopback; a non-loopback address without allow_remote is refused."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError as err:
        raise LoopWMError(f"--host {host!r} is not an IP address or 'localhost'") from err
    if not loopback and not allow_remote:
        raise LoopWMError(f"--host {host} would let anyone who can reach this machine drive the model; "
                          "bind to 127.0.0.1 (the default), or pass --allow-remote if that is what you want")
    return loopback


class Connections:
    """A cap on sessions at once (one event loop: no lock needed)."""

    def __init__(self, cap: int):
        if cap < 1:
            raise LoopWMError(f"--max-connections must be at least 1, got {cap}")
        self.cap, self.open = cap, 0


class RateLimit:
    """A token bucket: `rate` events per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate, self.burst, self.tokens, self.clock = rate, burst, burst, clock
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def create_app(player, max_connections: int = 4):
    """The web app for one loaded model: the page, its script, and the /ws step loop."""
    try:
        from fastapi import FastAPI, WebSocket, WebSocketDisconnect
        from fastapi.responses import FileResponse
    except ImportError as err:
        raise LoopWMError('loopwm play needs the play extra: pip install "loopwm[play]"') from err

    from loopwm.play.protocol import MAX_MESSAGES_PER_SECOND, MAX_RATE, ProtocolError, StepMessage, parse_message
    from loopwm.play.session import PlaySession

    app = FastAPI(title="loopwm play", docs_url=None, redoc_url=None, openapi_url=None)
    connections = Connections(max_connections)
    app.state.connections = connections
    files = {"/": ("index.html", "text/html"), "/play.js": ("play.js", "text/javascript"),
             "/play.css": ("play.css", "text/css")}

    def page(name: str, media: str):
        async def serve():
            return FileResponse(STATIC / name, media_type=media, headers={"Cache-Control": "no-store"})
        return serve

    for route, (name, media) in files.items():  # a fixed list: no path ever comes from a client
        app.add_api_route(route, page(name, media), methods=["GET"])

    @app.websocket("/ws")
    async def play(ws: WebSocket):
        await ws.accept()
        if connections.open >= connections.cap:
            await ws.send_json({"type": "error", "error": f"the server is full ({connections.cap} sessions at once); "
                                                          "close another page or try again later"})
            await ws.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        connections.open += 1
        try:
            try:
                session = await asyncio.to_thread(PlaySession, player, 0)
            except Exception as err:  # noqa: BLE001 - the world cannot be made: say why to this page only
                await ws.send_json({"type": "error", "error": f"cannot start a session: {type(err).__name__}: {err}"})
                await ws.close(code=1011)
                return
            await ws.send_json(player.hello())
            await ws.send_json(await asyncio.to_thread(session.reset, 0))
            await _serve(ws, session, WebSocketDisconnect)
        finally:
            connections.open -= 1

    async def _serve(ws, session, disconnect):
        messages = RateLimit(MAX_MESSAGES_PER_SECOND, MAX_MESSAGES_PER_SECOND)
        steps = RateLimit(MAX_RATE, 2.0)  # requested single steps share the running rate's cap
        wake = asyncio.Event()
        last_refusal = [0.0]

        async def refuse(text: str):
            await ws.send_json({"type": "error", "error": text})

        async def stepper():
            due = time.perf_counter()  # when the next step is due: paced by a clock, not by step length
            while True:
                if not session.settings.running:
                    wake.clear()
                    await wake.wait()
                    due = time.perf_counter()
                    continue
                try:
                    frame = await asyncio.to_thread(session.step)
                except Exception as err:  # noqa: BLE001 - a broken world ends this session only, with its reason
                    await refuse(f"the session stopped: {type(err).__name__}: {err}")
                    await ws.close(code=1011)
                    return
                await ws.send_json(frame)
                now = time.perf_counter()
                due = max(due + 1.0 / min(session.settings.rate, MAX_RATE), now - 0.1)  # late: no burst to catch up
                await asyncio.sleep(max(due - now, 0.0))  # also yields to the reader when steps are slow

        task = asyncio.create_task(stepper())
        try:
            while True:
                event = await ws.receive()
                if event["type"] == "websocket.disconnect":
                    break
                if task.done():  # the step loop ended this session (it said why)
                    break
                if not messages.take():
                    if time.monotonic() - last_refusal[0] > 1.0:
                        last_refusal[0] = time.monotonic()
                        await refuse(f"too many messages: at most {MAX_MESSAGES_PER_SECOND} a second; some were dropped")
                    continue
                try:
                    message = parse_message(event.get("text") if event.get("text") is not None else event.get("bytes"))
                    if isinstance(message, StepMessage) and not steps.take():
                        raise ProtocolError(f"too many step requests: at most {MAX_RATE:g} steps a second")
                    reply = await asyncio.to_thread(session.handle, message)
                except (ProtocolError, LoopWMError) as err:
                    await refuse(str(err))
                    continue
                if reply is not None:
                    await ws.send_json(reply)
                wake.set()
        except disconnect:
            pass
        finally:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, disconnect, RuntimeError):
                pass  # the page went away mid-send

    return app


def run_play(cfg: PlayConfig) -> None:
    try:
        import uvicorn
    except ImportError as err:
        raise LoopWMError('loopwm play needs the play extra: pip install "loopwm[play]"') from err
    from loopwm.play.session import Player

    loopback = check_host(cfg.host, cfg.allow_remote)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if not 0 <= cfg.port <= 65535:
        raise LoopWMError(f"--port must be in 0..65535, got {cfg.port}")
    player = Player.open(cfg.run, cfg.device, n_bodies=cfg.n_bodies, max_episode_steps=cfg.max_episode_steps,
                         frame_size=cfg.frame_size)
    app = create_app(player, cfg.max_connections)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as err:
        raise LoopWMError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror}); pick another --port "
                          "(0 picks a free one)") from err
    port = sock.getsockname()[1]
    if not loopback:
        print(f"loopwm play: warning: listening on {cfg.host}, reachable from other machines; anyone who can "
              "reach it can drive the model", file=sys.stderr)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"loopwm play: {player.env_id} with {Path(cfg.run).name} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_max_size=1 << 20))
    server.run(sockets=[sock])

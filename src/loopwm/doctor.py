"""`loopwm doctor`: what is installed and working, with a fix for every problem found.

Each check returns a `Check(name, status, detail, fix)`; status is "ok", "missing" (an optional
part that is not installed: only a problem if you need it) or "broken" (installed but not working).
The command exits with 1 when something is broken, so scripts can gate on it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class DoctorConfig:
    """Report what loopwm can use on this machine, and how to fix what is missing."""

    json: bool = False
    """Print one JSON object instead of a table."""
    render: bool = True
    """Try rendering one MuJoCo frame headless (takes a second or two when MuJoCo is installed)."""


@dataclass
class Check:
    name: str
    status: str  # ok | missing | broken
    detail: str
    fix: str = ""


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return None
    return str(getattr(mod, "__version__", "installed"))


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", "ok" if ok else "broken", platform.python_version(),
                 "" if ok else "loopwm needs Python 3.10 or newer")


def check_torch() -> list[Check]:
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        return [Check("torch", "broken", f"cannot import: {err}", 'pip install "torch==2.13.0"')]
    checks = [Check("torch", "ok", f"{torch.__version__}, {torch.get_num_threads()} threads "
                    f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {os.cpu_count()} CPUs")]
    from loopwm.utils import accelerator_build, device_label, pick_device

    device = pick_device("auto")  # what training would run on: the one place that chooses
    if device.type != "cpu":
        count = torch.accelerator.device_count()
        checks.append(Check("accelerator", "ok", f"training runs on {device_label(device)}; {count} device(s)"))
    else:
        built = accelerator_build()
        checks.append(Check("accelerator", "missing", "no accelerator: training runs on the CPU" +
                            (f" (this torch was built for {built})" if built else " (CPU build of torch)"),
                            "for a GPU, install the torch 2.13.0 build that matches your driver"))
    try:
        x = torch.randn(64, 64)
        ok = bool(torch.isfinite(x @ x).all())
        checks.append(Check("torch compute", "ok" if ok else "broken", "a matrix product on the CPU",
                            "" if ok else "reinstall torch"))
    except Exception as err:  # noqa: BLE001
        checks.append(Check("torch compute", "broken", str(err), "reinstall torch"))
    return checks


EXTRAS = {  # module -> (what it gives, how to get it)
    "gymnasium": ("environment API (required)", 'pip install -e .'),
    "safetensors": ("checkpoints (required)", 'pip install -e .'),
    "mujoco": ("MuJoCo tasks (HalfCheetah-v5, ...)", 'pip install "loopwm[mujoco]"'),
    "pygame": ("frames from classic-control envs (CartPole, Pendulum)", 'pip install "loopwm[classic]"'),
    "ale_py": ("Atari games (ALE/Pong-v5, ...)", 'pip install "loopwm[atari]"'),
    "cv2": ("Atari preprocessing (resizing)", 'pip install "loopwm[atari]"'),
    "tensorboard": ("loopwm train --tensorboard", 'pip install "loopwm[tensorboard]"'),
    "minari": ("Minari datasets in and out (loopwm import / export)", 'pip install "loopwm[minari]"'),
    "fastapi": ("loopwm play (the web server)", 'pip install "loopwm[play]"'),
    "scienceworld": ("text worlds (loopwm text collect; needs java)", 'pip install "loopwm[text]"'),
    "textworld_express": ("the ALFWorld stand-in (text collect --simulator textworld-express; needs java)",
                          'pip install "loopwm[text]"'),
    "tokenizers": ("text world models (loopwm text train / eval)", 'pip install "loopwm[text]"'),
    "hypothesis": ("property-based tests", 'pip install -e ".[dev]"'),
}


def check_extras() -> list[Check]:
    out = []
    for module, (gives, fix) in EXTRAS.items():
        version = _version(module) if importlib.util.find_spec(module) is not None else None
        required = "required" in gives
        if version is None:
            out.append(Check(module, "broken" if required else "missing", f"not installed: {gives}", fix))
        else:
            out.append(Check(module, "ok", f"{version}: {gives}"))
    return out


def check_java() -> Check:
    java = shutil.which("java")
    if java is None:
        return Check("java", "missing", "no java on PATH: text worlds such as ScienceWorld need it",
                     "install a Java runtime, e.g. apt-get install -y openjdk-17-jre-headless")
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
        line = (proc.stderr or proc.stdout).splitlines()[0] if (proc.stderr or proc.stdout) else "java"
        return Check("java", "ok" if proc.returncode == 0 else "broken", line,
                     "" if proc.returncode == 0 else "reinstall the JDK")
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("java", "broken", str(err), "reinstall the JDK")


def check_headless_gl(render: bool) -> Check:
    backend = os.environ.get("MUJOCO_GL", "egl (loopwm's default)")
    if importlib.util.find_spec("mujoco") is None:
        return Check("headless GL", "missing", "MuJoCo not installed, so no frames to render",
                     'pip install "loopwm[mujoco]"')
    if not render:
        return Check("headless GL", "ok", f"MUJOCO_GL={backend} (not tried: --no-render)")
    # in a child process: a GL failure can abort the interpreter, and doctor must still report it
    code = ("import os; os.environ.setdefault('MUJOCO_GL','egl'); os.environ.setdefault('PYOPENGL_PLATFORM', os.environ['MUJOCO_GL']);"
            "import mujoco; m=mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\".1\"/></worldbody></mujoco>');"
            "r=mujoco.Renderer(m,16,16); d=mujoco.MjData(m); mujoco.mj_forward(m,d); r.update_scene(d); print(r.render().shape)")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return Check("headless GL", "broken", "rendering one frame timed out", "try MUJOCO_GL=osmesa")
    if proc.returncode == 0:
        return Check("headless GL", "ok", f"MUJOCO_GL={backend}: rendered a 16x16 frame")
    last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
    return Check("headless GL", "broken", f"MUJOCO_GL={backend}: {last}",
                 "apt-get install -y libegl1 libgl1-mesa-dri (EGL), or apt-get install -y libosmesa6 and set "
                 "MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa")


def check_disk(path: str = ".") -> Check:
    free = shutil.disk_usage(path).free / 2**30
    writable = os.access(path, os.W_OK)
    status = "ok" if writable and free > 1 else "broken"
    return Check("disk", status, f"{free:.1f} GiB free in {Path(path).resolve()}, {'writable' if writable else 'NOT writable'}",
                 "" if status == "ok" else "free some space (datasets and checkpoints are written here) or run elsewhere")


def run_checks(cfg: DoctorConfig) -> list[Check]:
    from loopwm import __version__

    return [Check("loopwm", "ok", __version__), check_python(), *check_torch(), *check_extras(), check_java(),
            check_headless_gl(cfg.render), check_disk()]


def doctor(cfg: DoctorConfig) -> int:
    checks = run_checks(cfg)
    if cfg.json:
        import json

        print(json.dumps([asdict(c) for c in checks]))
    else:
        mark = {"ok": "ok", "missing": "--", "broken": "!!"}
        for c in checks:
            print(f"[{mark[c.status]}] {c.name:<14} {c.detail}")
            if c.fix and c.status != "ok":
                print(f"     {'':<14} fix: {c.fix}")
    return 1 if any(c.status == "broken" for c in checks) else 0

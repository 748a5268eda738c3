"""Which on-disk format should dataset shards use? Today's .npz shards (arrays mapped in place by
data/shards.py) against safetensors files opened with the library's `safe_open`, and plain .npy
files mapped by numpy's own `np.load(mmap_mode="r")`, on one large dataset.

    python scripts/large_data.py --out results/large_data --modes mmap     # the 10M-step dataset, once
    python scripts/shard_formats.py --data results/large_data/data --out results/shard_formats

For every format the shards are rewritten once (same arrays, same order), then a fresh process
opens them all and draws random training windows (batch 32, 11 observations each, spread over the
whole dataset, as training does), and reports: size on disk, time to open, resident memory after
opening and at its peak while sampling (anonymous: the process's own copies; file: mapped pages the
kernel can drop), and batches per second. Writes OUT/shard_formats.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tyro

from loopwm.utils import atomic_write_json

FORMATS = ("npz-mapped", "npz-read", "safetensors", "npy-mapped")


@dataclass
class ShardFormatsConfig:
    """Measure shard formats on one dataset."""

    data: str = "results/large_data/data"
    """A loopwm dataset (npz shards), e.g. the 10M-step one of scripts/large_data.py."""
    out: str = "results/shard_formats"
    """Folder for shard_formats.json; the rewritten shards go to OUT/formats (ignored by git)."""
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    """Formats to measure."""
    batches: int = 400
    """Random batches drawn per format."""
    batch_size: int = 32
    window: int = 10


def _memory() -> dict[str, float]:
    with open("/proc/self/status") as f:
        rows = dict(line.split(":", 1) for line in f)
    kib = {k: int(rows[k].split()[0]) for k in ("VmHWM", "RssAnon", "RssFile")}
    return {"peak_rss_gib": kib["VmHWM"] / 2**20, "anon_gib": kib["RssAnon"] / 2**20, "file_gib": kib["RssFile"] / 2**20}


def convert(data: Path, fmt: str, root: Path) -> Path:
    """The dataset's shards rewritten in `fmt` (npz formats use the originals)."""
    if fmt.startswith("npz"):
        return data
    from safetensors.numpy import save_file

    from loopwm.data.shards import _read_npz

    target = root / fmt
    done = target / "done"
    if done.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for shard in sorted(data.glob("shard_*.npz")):
        arrays = {k: np.ascontiguousarray(v) for k, v in _read_npz(shard).items()}
        if fmt == "safetensors":
            save_file(arrays, str(target / (shard.stem + ".safetensors")))
        else:
            folder = target / shard.stem
            folder.mkdir(exist_ok=True)
            for key, arr in arrays.items():
                np.save(folder / f"{key}.npy", arr)
    done.write_text("")
    return target


def open_shards(path: Path, fmt: str) -> list[dict[str, np.ndarray]]:
    if fmt in ("npz-mapped", "npz-read"):
        from loopwm.data.shards import _read_npz

        maps: list = []
        return [_read_npz(s, mmap=fmt == "npz-mapped", maps=maps) for s in sorted(path.glob("shard_*.npz"))]
    if fmt == "safetensors":
        from safetensors import safe_open

        shards = []
        for s in sorted(path.glob("shard_*.safetensors")):
            with safe_open(str(s), framework="numpy") as f:
                shards.append({k: f.get_tensor(k) for k in f.keys()})
        return shards
    return [{p.stem: np.load(p, mmap_mode="r", allow_pickle=False) for p in sorted(d.glob("*.npy"))}
            for d in sorted(path.glob("shard_*")) if d.is_dir()]


def child(path: Path, fmt: str, batches: int, batch_size: int, window: int) -> dict:
    start = time.perf_counter()
    shards = open_shards(path, fmt)
    open_s = time.perf_counter() - start
    after_open = _memory()
    rng = np.random.default_rng(0)
    lengths = [s["episode_lengths"] for s in shards]
    obs_start = [np.concatenate([[0], np.cumsum(l + 1)[:-1]]) for l in lengths]
    step_start = [np.concatenate([[0], np.cumsum(l)[:-1]]) for l in lengths]
    start = time.perf_counter()
    total = 0.0
    for _ in range(batches):
        k = rng.integers(len(shards), size=batch_size)  # windows spread over the whole dataset
        for j in np.unique(k):
            n = int((k == j).sum())
            ep = rng.integers(len(lengths[j]), size=n)
            t0 = (rng.random(n) * (lengths[j][ep] - window + 1)).astype(np.int64)
            obs_rows = (obs_start[j][ep] + t0)[:, None] + np.arange(window + 1)
            step_rows = (step_start[j][ep] + t0)[:, None] + np.arange(window)
            for key, arr in shards[j].items():
                if key != "episode_lengths":
                    total += float(arr[obs_rows if key == "obs" else step_rows].reshape(n, -1)[:, 0].astype(np.float64).sum())
    sample_s = time.perf_counter() - start
    return {"format": fmt, "open_s": open_s, "after_open": after_open, "after_sampling": _memory(),
            "batches_per_s": batches / sample_s, "checksum": total}


def main(cfg: ShardFormatsConfig) -> dict:
    data, out = Path(cfg.data), Path(cfg.out)
    manifest = json.loads((data / "manifest.json").read_text())
    rows = []
    for fmt in cfg.formats:
        path = convert(data, fmt, out / "formats")
        files = [p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json" and p.name != "done"
                 and (fmt.startswith("npz") == (p.suffix == ".npz"))]
        size = sum(p.stat().st_size for p in files)
        proc = subprocess.run([sys.executable, __file__, "--child", fmt, str(path), str(cfg.batches),
                               str(cfg.batch_size), str(cfg.window)], capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "files": len(files), "gib_on_disk": size / 2**30}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"dataset": {"path": str(data), "steps": manifest["steps"], "episodes": manifest["episodes"],
                          "shards": len(manifest["shards"])}, "rows": rows, "config": asdict(cfg)}
    atomic_write_json(out / "shard_formats.json", result)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        fmt, path, batches, batch_size, window = sys.argv[2], Path(sys.argv[3]), *map(int, sys.argv[4:7])
        print(json.dumps(child(path, fmt, batches, batch_size, window)))
    else:
        main(tyro.cli(ShardFormatsConfig))

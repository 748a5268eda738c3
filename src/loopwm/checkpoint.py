"""Checkpoints as safetensors + JSON: never pickle, always atomic, verified on load.

A checkpoint is two files in `RUN/checkpoints/`: `step_XXXXXXXX.safetensors` (model weights,
optimiser moments, torch RNG state) and `step_XXXXXXXX.json` (format tag, step, the model's spec
and config, optimiser hyper-parameters, NumPy RNG state, the sha256 of the tensor file). The JSON
is written last and acts as the commit marker: a checkpoint without its JSON, or whose tensor file
does not match the recorded hash, is ignored when resuming (and reported when loaded by name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from loopwm.utils import LoopWMError, atomic_save, atomic_write_json, read_json, sha256_file

FORMAT = "loopwm-checkpoint"
FORMAT_VERSION = 1
KEEP = 2  # checkpoints kept per run


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    average=None,
) -> Path:
    """Write checkpoint `step` atomically and prune old ones; returns the JSON path. `average`: a
    weight average kept beside the model (anything with `state_dict`; saved under `average/`,
    restored by `resume`)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    stem = ckpt_dir / f"step_{step:08d}"
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"average/{k}": v.detach().cpu().contiguous() for k, v in average.state_dict().items()})
    tensors["rng/torch"] = torch.get_rng_state()
    opt_meta = None
    if optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        tensors.update(opt_tensors)
    tensor_path = stem.with_suffix(".safetensors")
    atomic_save(tensor_path, lambda tmp: save_file(tensors, tmp))
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "tensors": tensor_path.name,
        "sha256": sha256_file(tensor_path),
        "optimizer": opt_meta,
        **meta,
    }
    json_path = stem.with_suffix(".json")
    atomic_write_json(json_path, record)
    for old in sorted(ckpt_dir.glob("step_*.json"))[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return json_path


def read_checkpoint(json_path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load one checkpoint, checking that it is ours, complete and uncorrupted."""
    json_path = Path(json_path)
    meta = read_json(json_path, "checkpoint metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LoopWMError(f"{json_path} is not a loopwm checkpoint (format field missing or foreign)")
    version, tensors_name = meta.get("format_version", 0), meta.get("tensors")
    if isinstance(version, bool) or not isinstance(version, int):
        raise LoopWMError(f"{json_path} is damaged: its format_version is {version!r}; delete it to fall back to an older checkpoint")
    if version > FORMAT_VERSION:
        raise LoopWMError(f"{json_path} was written by a newer loopwm (format {version}); upgrade loopwm")
    if not isinstance(tensors_name, str) or Path(tensors_name).name != tensors_name or not tensors_name.endswith(".safetensors"):
        raise LoopWMError(f"{json_path} is damaged: it names {tensors_name!r} as its tensor file; delete it to fall back "
                          "to an older checkpoint")
    tensor_path = json_path.with_name(tensors_name)
    if not tensor_path.exists():
        raise LoopWMError(f"checkpoint tensors missing: {tensor_path}; the run was copied incompletely")
    if verify and sha256_file(tensor_path) != meta.get("sha256"):
        raise LoopWMError(f"checkpoint {tensor_path} is corrupt (checksum mismatch); delete it to fall back to an older one")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise LoopWMError(f"checkpoint {tensor_path} cannot be read ({err}); it is corrupt or not a safetensors file") from err
    return tensors, meta


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest checkpoint JSON of a run whose tensors are present and intact, or None."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    for json_path in sorted(ckpt_dir.glob("step_*.json"), reverse=True):
        try:
            read_checkpoint(json_path, verify=True)
        except LoopWMError:
            continue  # a half-written or damaged checkpoint: try the one before
        return json_path
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a run directory, a checkpoints folder or a checkpoint JSON / safetensors file."""
    path = Path(path)
    if not path.exists():
        raise LoopWMError(f"no such run or checkpoint: {path}")
    if path.is_dir():
        run = path.parent if path.name == "checkpoints" else path
        found = latest_checkpoint(run)
        if found is None:
            raise LoopWMError(f"no intact checkpoint under {run}/checkpoints; train first (loopwm train) or check the path")
        return found
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if path.suffix != ".json":
        raise LoopWMError(f"{path} is not a checkpoint: pass a run directory or a step_*.json file")
    return path


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if meta.get("optimizer") is None:
        return
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))


def resume(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rng,
           checkpoint: Path | None = None, average=None) -> dict[str, Any] | None:
    """Restore a run from its newest intact checkpoint (or `checkpoint`, that one already found):
    weights, optimiser moments, the torch and NumPy (`rng`, a Generator) random states, and the
    weight `average` when given (one the checkpoint lacks starts from the restored weights).
    Returns the checkpoint's metadata, or None for a fresh run."""
    found = checkpoint if checkpoint is not None else latest_checkpoint(run_dir)
    if found is None:
        return None
    tensors, meta = read_checkpoint(found)
    load_weights(model, model_state(tensors))
    if average is not None:
        saved = {k[len("average/") :]: v for k, v in tensors.items() if k.startswith("average/")}
        average.load_state_dict(saved if saved else model.state_dict())
    restore_optimizer(optimizer, tensors, meta)
    torch.set_rng_state(tensors["rng/torch"])
    rng.bit_generator.state = meta["numpy_rng"]
    return meta


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict, except that values of buffers the model derives from its spec (and no longer
    saves) are ignored: checkpoints written while they were still saved keep loading."""
    saved_now = set(model.state_dict())
    derived = {name for name, _ in model.named_buffers()} - saved_now
    model.load_state_dict({k: v for k, v in state.items() if k not in derived})


def build_model(meta: dict[str, Any]) -> torch.nn.Module:
    """Rebuild a model from the `kind`, `spec` and `model` fields of checkpoint metadata."""
    from loopwm.models.world_model import ModelConfig, WorldModel, WorldSpec

    kind = meta.get("kind")
    if kind not in ("looped", "deep", "rssm"):
        raise LoopWMError(f"checkpoint holds a model of unknown kind {kind!r}")
    if not isinstance(meta.get("spec"), dict) or not isinstance(meta.get("model"), dict):
        raise LoopWMError("checkpoint metadata lacks the spec and model sections; it is damaged or foreign")
    try:
        if kind == "rssm":
            from loopwm.models.rssm import RSSM, RSSMConfig

            return RSSM(WorldSpec(**meta["spec"]), RSSMConfig(**meta["model"]))
        return WorldModel(WorldSpec(**meta["spec"]), ModelConfig(**meta["model"]))
    except LoopWMError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to build from the metadata means it is not ours
        raise LoopWMError(f"checkpoint metadata describes a model this loopwm cannot build ({type(err).__name__}: "
                          f"{str(err)[:200]}); it is damaged, foreign, or from an incompatible loopwm version") from err


def load_model(path: str | Path, device: str | torch.device = "cpu", build=None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a trained model (eval mode) from a run directory or checkpoint file; `build` makes the
    model from the checkpoint metadata (default: the physics models' `build_model`)."""
    json_path = resolve_checkpoint(path)
    tensors, meta = read_checkpoint(json_path)
    model = (build or build_model)(meta)
    try:
        load_weights(model, model_state(tensors))
    except RuntimeError as err:
        raise LoopWMError(f"checkpoint weights do not fit the model they claim to be ({str(err)[:200]})") from err
    model = model.to(device).eval()
    attach_halting_head(model, json_path, meta)
    return model, meta


def run_folder(run: str | Path) -> Path:
    """The run directory of a run folder or of one of its checkpoint files."""
    path = Path(run)
    return path.parent.parent if path.suffix in (".json", ".safetensors") else path


def training_context(run: str | Path, default: int = 4) -> int:
    """The `--context` the run was trained with (its config.json), else `default`: scoring after as
    many observations as training showed is the fair reading of a model."""
    path = run_folder(run) / "config.json"
    try:
        return int(json.loads(path.read_text()).get("context", default))
    except (OSError, ValueError, TypeError, AttributeError):
        return default


HALTING = "halting"  # RUN/halting.safetensors + RUN/halting.json: a halting head fitted to one checkpoint


def save_halting_head(run_dir: str | Path, head: torch.nn.Module, checkpoint: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write a fitted halting head (models/exits.HaltingHead) beside the run's checkpoints, tied to
    the checkpoint it was fitted to (its tensor hash): the JSON is written last, as the commit marker."""
    run_dir = Path(run_dir)
    tensor_path = run_dir / f"{HALTING}.safetensors"
    atomic_save(tensor_path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, tmp))
    json_path = run_dir / f"{HALTING}.json"
    atomic_write_json(json_path, {"format": FORMAT + "-halting", "d": head.d, "hidden": head.hidden, "eps": head.eps,
                                  "target": head.target,
                                  "sha256": sha256_file(tensor_path), "checkpoint_step": checkpoint.get("step"),
                                  "checkpoint_sha256": checkpoint.get("sha256"), **info})
    return json_path


def attach_halting_head(model: torch.nn.Module, checkpoint_json: Path, meta: dict[str, Any]) -> None:
    """Give `model` the halting head of its run when one was fitted to this very checkpoint (as the
    plain attribute `halting_head`, outside the module tree, so saving the model never includes it);
    otherwise say why not in `halting_stale`, for the token-halt rule's error message."""
    run_dir = run_folder(checkpoint_json)
    json_path = run_dir / f"{HALTING}.json"
    if not json_path.exists():
        return
    from loopwm.models.exits import HaltingHead

    info = read_json(json_path, "halting head metadata")
    if not isinstance(info, dict) or info.get("format") != FORMAT + "-halting":
        object.__setattr__(model, "halting_stale", f"{json_path} is not a loopwm halting head")
        return
    if info.get("checkpoint_sha256") != meta.get("sha256"):
        object.__setattr__(model, "halting_stale", f"the head in {run_dir} was fitted to the checkpoint of step "
                           f"{info.get('checkpoint_step')}, not this one of step {meta.get('step')}: fit it again")
        return
    tensor_path = run_dir / f"{HALTING}.safetensors"
    if not tensor_path.exists() or sha256_file(tensor_path) != info.get("sha256"):
        object.__setattr__(model, "halting_stale", f"{tensor_path} is missing or corrupt: fit it again")
        return
    head = HaltingHead(int(info["d"]), int(info["hidden"]), float(info["eps"]), str(info.get("target", "error")))
    try:
        head.load_state_dict(load_file(str(tensor_path)))
    except (SafetensorError, RuntimeError, OSError) as err:
        object.__setattr__(model, "halting_stale", f"{tensor_path} does not fit this model ({str(err)[:120]}): fit it again")
        return
    device = next(model.parameters()).device
    object.__setattr__(model, "halting_head", head.to(device).eval())  # plain attribute: not a submodule of the world model

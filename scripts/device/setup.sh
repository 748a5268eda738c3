# Sourced by the device scripts: the packages the accelerator's image lacks (carried as wheels in
# .whl/, ignored by git) and this checkout on PYTHONPATH; stops unless CUDA is there (ALLOW_CPU=1
# runs anyway, for a smoke test here).
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python3 -c "import torch, sys; print(torch.__version__, torch.cuda.is_available()); sys.exit(0 if torch.cuda.is_available() or '${ALLOW_CPU:-}' else 1)" \
  || { echo "no CUDA device: this script is sized for an accelerator (ALLOW_CPU=1 to try it anyway)"; exit 3; }

# sourced by the device scripts: install the repo and the carried wheels, print versions
set -uo pipefail
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

#!/usr/bin/env bash
# Here, before a device call: the wheels the device image lacks (its python3 is 3.12 and holds torch,
# torchvision, onnxruntime, OpenCV, Pillow, scikit-image, scikit-learn, SciPy, matplotlib, tqdm, PyYAML and
# safetensors, but no DICOM decoders), for CPython 3.12 on x86-64 Linux, into .whl/ at the repository root
# (ignored by git; about 36 MB, inside the 64 MiB a device call may carry). Versions: pyproject.toml's pins.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
pins=$(sed -n 's/^ *"\(pydicom\|pylibjpeg[a-z-]*\|pyjpegls\|imagecodecs\)==\([^"]*\)",.*/\1==\2/p' pyproject.toml)
[ "$(echo "$pins" | wc -l)" -eq 7 ] || { echo "expected 7 decoder pins in pyproject.toml, found: $pins" >&2; exit 2; }
platforms=(--platform manylinux2014_x86_64)
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
mkdir -p .whl
# shellcheck disable=SC2086  # one word per pin
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl $pins
ls -1 .whl
du -sh .whl

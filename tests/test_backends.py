"""The pruning core on every Keras backend that is installed (each in its own process)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

BACKENDS = ["tensorflow", "jax", "torch"]
# |gradient| summed over the last kernel, from numpy-seeded weights (see backend_pruning.py).
REFERENCE_GRADIENT_SUM = 0.7490473


@pytest.mark.parametrize("backend", BACKENDS)
def test_pruning_core_trains_saves_resumes_and_strips_on_the_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    script = os.path.join(os.path.dirname(__file__), "backend_pruning.py")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["backend"] == backend
    assert facts["steps"] == [16, 16, 16]
    assert facts["sparsities"] == pytest.approx([58 / 72, round(0.8 * 4608) / 4608, 0.8])
    assert facts["stored_zeros_follow_masks"]
    assert facts["strip_max_difference"] == 0.0
    assert facts["loaded_steps"] == [16, 16, 16]
    assert facts["resumed_steps"] == [24, 24, 24]
    assert "UpdatePruningStep" in facts["missing_callback_error"]
    # Seeded weights and data, so every backend computes the same gradient magnitudes.
    assert facts["gradient_sum"] == pytest.approx(REFERENCE_GRADIENT_SUM, rel=1e-3)

"""Export for deployment: TFLite files checked in LiteRT, and TensorFlow SavedModels.

This is the one part of tfsparse that needs TensorFlow (for the TFLite converter and SavedModel)
and the LiteRT interpreter (package ai-edge-litert). Its names load on first use, so that
`import tfsparse` (which imports this package) stays free of TensorFlow on the JAX and PyTorch
backends.
"""

import importlib

_LOCATIONS = {
    "QUANTIZE_MODES": "tfsparse.export.tflite",
    "to_tflite": "tfsparse.export.tflite",
    "TFLiteReport": "tfsparse.export._litert",
    "verify_tflite": "tfsparse.export._litert",
    "SavedModelReport": "tfsparse.export.saved_model",
    "to_saved_model": "tfsparse.export.saved_model",
    "OutputExistsError": "tfsparse.export._files",
    "to_onnx": "tfsparse.export.onnx",
}

__all__ = sorted(_LOCATIONS)


def __getattr__(name: str):
    if name not in _LOCATIONS:
        raise AttributeError(f"module 'tfsparse.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LOCATIONS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

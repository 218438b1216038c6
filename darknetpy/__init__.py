"""darknetpy: run and train Darknet networks from their .cfg files, on any CPU, with nothing to compile.

Importing the package sets up the threads (below) and nothing else: the public names are imported on first
use (PEP 562), so that a command or a script pays only for the modules it uses.
"""
from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

from .distributed.threads import share_cores_among_local_ranks as _share_cores  # noqa: E402

_share_cores()  # under mpiexec: each local rank gets its share of the cores, before numpy and numba load

from . import thread_environment as _thread_environment  # noqa: E402

# how idle threads wait, read by OpenBLAS and OpenMP when they load
_thread_environment.note_blas_settings(_thread_environment.apply_environment_defaults())

from .kernels import threads as _threads  # noqa: E402,F401  (thread wait policy before Numba starts threads)

# public name -> the module defining it
_PUBLIC = {
    "load": "api", "Model": "api", "Prediction": "api",
    "parse_cfg": "config", "parse_cfg_text": "config",
    "CfgError": "errors", "DarknetError": "errors", "DarknetWarning": "errors", "DataError": "errors",
    "ImageError": "errors", "UnsupportedError": "errors", "WeightsError": "errors",
    "export_onnx": "export",   # needs the onnx extra only when called
    "Network": "network", "build_network": "network", "load_cfg": "network",
    "read_weights": "weights", "write_weights": "weights",
}

__all__ = ["load", "Model", "Prediction", "Network", "build_network", "load_cfg", "parse_cfg", "parse_cfg_text",
           "read_weights", "write_weights", "DarknetError", "CfgError", "UnsupportedError", "WeightsError",
           "ImageError", "DataError", "DarknetWarning", "export_onnx", "__version__"]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        # `import darknetpy; darknetpy.api.load(...)` kept working while the package imported its modules
        # eagerly: a submodule is still imported on first attribute access
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'darknetpy' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value     # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""darknetpy: run and train Darknet networks from their .cfg files, on any CPU, with nothing to compile."""
from __future__ import annotations

__version__ = "0.1.0"

from .distributed.threads import share_cores_among_local_ranks as _share_cores  # noqa: E402

_share_cores()  # under mpiexec: each local rank gets its share of the cores, before numpy and numba load

from .kernels import threads as _threads  # noqa: E402,F401  (thread wait policy before Numba starts threads)

from .api import Model, Prediction, load  # noqa: E402
from .config import parse_cfg, parse_cfg_text  # noqa: E402
from .errors import (CfgError, DarknetError, DarknetWarning, DataError, ImageError,  # noqa: E402
                     UnsupportedError, WeightsError)
from .export import export_onnx  # noqa: E402  (needs the onnx extra only when called)
from .network import Network, build_network, load_cfg  # noqa: E402
from .weights import read_weights, write_weights  # noqa: E402

__all__ = ["load", "Model", "Prediction", "Network", "build_network", "load_cfg", "parse_cfg", "parse_cfg_text",
           "read_weights", "write_weights", "DarknetError", "CfgError", "UnsupportedError", "WeightsError",
           "ImageError", "DataError", "DarknetWarning", "export_onnx", "__version__"]

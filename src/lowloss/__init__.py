"""lowloss: find, measure and use the low-loss regions of neural-network loss surfaces.

The package top is light: the methods are imported when first used (``lowloss.run``, ``lowloss.connect``).
"""

from ._version import __version__
from .api import run
from .errors import LowlossError


def __getattr__(name):  # the heavier API, imported on first use
    if name in ("flatten", "functional_forward", "recompute_bn", "unflatten"):
        from . import params

        return getattr(params, name)
    if name == "load_dataset":
        from .data import load_dataset

        return load_dataset
    if name == "build_model":
        from .models import build_model

        return build_model
    if name in ("load_run", "RunDir"):
        from . import rundir

        return getattr(rundir, name)
    if name == "connect":
        from .api import connect

        return connect
    if name == "load_curve":
        from .methods.connect import load_curve

        return load_curve
    if name in ("permutation_spec", "weight_matching", "apply_permutation"):
        from . import permute

        return getattr(permute, name)
    if name == "align_vector":
        from .methods.align import align_vector

        return align_vector
    if name == "make_executor":
        from .engine.executor import make_executor

        return make_executor
    if name in ("train", "TrainConfig"):
        from .methods import train

        return train.train if name == "train" else train.Config
    raise AttributeError(f"module 'lowloss' has no attribute '{name}'")


__all__ = ["LowlossError", "RunDir", "TrainConfig", "__version__", "align_vector", "apply_permutation",
           "build_model", "connect", "flatten", "functional_forward", "load_curve", "load_dataset", "load_run",
           "make_executor", "permutation_spec", "recompute_bn", "run", "train", "unflatten", "weight_matching"]

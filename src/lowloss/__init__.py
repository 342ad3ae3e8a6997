"""lowloss: find, measure and use the low-loss regions of neural-network loss surfaces."""

__version__ = "0.1.0"

from .data import load_dataset  # noqa: E402
from .methods.connect import connect, load_curve  # noqa: E402  (mode connectivity, issue 3)
from .models import build_model  # noqa: E402
from .params import flatten, functional_forward, recompute_bn, unflatten  # noqa: E402
from .runs import TrainConfig, load_run, train_mode  # noqa: E402
from .utils import LowlossError  # noqa: E402

__all__ = ["LowlossError", "TrainConfig", "build_model", "flatten", "functional_forward", "load_dataset",
           "load_run", "recompute_bn", "train_mode", "unflatten"]
__all__ += ["connect", "load_curve"]

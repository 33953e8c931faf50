"""uniopt: one optimizer spec, every deep-learning framework, the same numbers.

The core is framework-neutral: each optimizer is a frozen hyperparameter record with pure
``init(params, xp)`` and ``update(grads, state, params, xp)`` over an array-API namespace ``xp``.
Adapters (``uniopt.torch``, ``uniopt.tf``, ``uniopt.jax``) bind it to each framework's contract.

>>> import numpy as np, uniopt
>>> opt = uniopt.RAdam(lr=1e-3)
>>> params = [np.ones(3, dtype=np.float32)]
>>> state = opt.init(params)
>>> params, state = opt.update([np.full(3, 0.5, np.float32)], state, params)
>>> state.step
1
"""

from ._spec import Spec, State
from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam
from .adamax import Adamax
from .adamw import AdamW
from .lamb import Lamb
from .lion import Lion
from .muon import Muon
from .nadam import NAdam
from .porting import PortableState, load_state, save_state
from .radam import RAdam
from .rmsprop import RMSprop
from .schedule_free_adamw import ScheduleFreeAdamW
from .sgd import SGD

__all__ = [
    "SGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Lamb",
    "Lion",
    "Muon",
    "NAdam",
    "PortableState",
    "RAdam",
    "RMSprop",
    "ScheduleFreeAdamW",
    "Spec",
    "State",
    "load_state",
    "save_state",
]
__version__ = "0.1.0"

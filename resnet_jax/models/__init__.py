"""Plain and residual networks of He et al. (2016): see ``nets``."""

from resnet_jax.models.nets import *  # noqa: F401,F403
from resnet_jax.models.nets import _jaxpr_macs, _main  # noqa: F401

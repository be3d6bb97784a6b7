"""Plain and residual networks for depth studies (He et al. 2016; 2016b; Wide ResNets), in Flax linen.

A plain net and its residual twin differ only in the shortcut: every block has a ``residual``
flag, and a plain block has no shortcut at all (so a plain net has exactly the parameters of the
option-A ResNet). Blocks, families and normalisations are chosen by name:

* ``blocks``: basic, bottleneck, pre-activation basic / bottleneck, wide (``BLOCKS``); shortcut
  options A/B/C.
* ``nets``: the families ``CifarResNet`` (6n+2 / 9n+2), ``ImageNetResNet`` (18-152) and
  ``WideResNet`` (WRN-d-k, 6n+4); ``norm`` = "batch" | "group" | "none".
* ``norm``: batch norm with optional group statistics (the paper's per-GPU BN), group norm.
* ``registry``: named nets (``MODEL_NAMES``), ``create_model``, ``from_config``.
* ``counting``: ``count_params``, ``count_macs``, ``describe``; ``order``: ``network_order``.
* ``cpu_conv``: a conv whose gradients XLA CPU runs fast inside ``nn.scan`` (a backend workaround).

``python -m resnet_jax.models`` prints layers / parameters / multiply-adds of every named net.
This package imports nothing else from the project.
"""

from resnet_jax.models.blocks import (
    BLOCKS,
    SHORTCUTS,
    BasicBlock,
    Block,
    BlockBase,
    BottleneckBlock,
    ConvLayer,
    PostActivationBlock,
    PreActBlock,
    PreActBottleneckBlock,
    PreActivationBlock,
    WideBlock,
    block_name,
)
from resnet_jax.models.counting import abstract_variables, count_macs, count_params, default_input_shape, describe
from resnet_jax.models.cpu_conv import canonical_conv_general_dilated
from resnet_jax.models.nets import (
    IMAGENET_BOTTLENECK,
    IMAGENET_STAGES,
    SCAN_AUTO_MAX_UNROLLED_BLOCKS,
    BlockModule,
    CifarResNet,
    ImageNetResNet,
    WideResNet,
    cifar_stages,
    conv_init,
    dense_init,
    imagenet_stages,
    wrn_stages,
)
from resnet_jax.models.norm import NORMS, BatchNorm, GroupNorm, make_norm
from resnet_jax.models.order import Located, NetworkOrder, network_order
from resnet_jax.models.registry import FAMILIES, MODEL_NAMES, create_model, family_name, from_config

__all__ = [
    "BLOCKS",
    "FAMILIES",
    "IMAGENET_BOTTLENECK",
    "IMAGENET_STAGES",
    "MODEL_NAMES",
    "NORMS",
    "SCAN_AUTO_MAX_UNROLLED_BLOCKS",
    "SHORTCUTS",
    "BasicBlock",
    "BatchNorm",
    "Block",
    "BlockBase",
    "BlockModule",
    "BottleneckBlock",
    "CifarResNet",
    "ConvLayer",
    "GroupNorm",
    "ImageNetResNet",
    "Located",
    "NetworkOrder",
    "PostActivationBlock",
    "PreActBlock",
    "PreActBottleneckBlock",
    "PreActivationBlock",
    "WideBlock",
    "WideResNet",
    "abstract_variables",
    "block_name",
    "canonical_conv_general_dilated",
    "cifar_stages",
    "conv_init",
    "count_macs",
    "count_params",
    "create_model",
    "default_input_shape",
    "dense_init",
    "describe",
    "family_name",
    "from_config",
    "imagenet_stages",
    "make_norm",
    "network_order",
    "wrn_stages",
]

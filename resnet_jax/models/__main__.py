from resnet_jax.models.nets import _main

_main()

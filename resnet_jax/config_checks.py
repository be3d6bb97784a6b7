"""Settings that cannot run fail here, before anything is written, with a line that says what to do."""
from __future__ import annotations

from resnet_jax import data, models, optim


def validate_config(config, num_devices: int) -> None:
    """Raises ValueError (one line, naming the flag) on a config that cannot train on `num_devices`."""
    classes = data.num_classes(config.dataset, config.get("num_classes"))
    if config.batch_size % num_devices:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {num_devices} devices; "
                         f"use a multiple of {num_devices} (--config.batch_size=...)")
    if config.eval_batch_size % num_devices:
        raise ValueError(f"eval_batch_size {config.eval_batch_size} is not divisible by the {num_devices} "
                         f"devices; use a multiple of {num_devices}")
    group = config.model.bn_group_size
    if group and config.batch_size % group:
        raise ValueError(f"bn_group_size {group} must divide batch_size {config.batch_size} "
                         "(0 = statistics over the whole batch)")
    for name in ("log_every", "eval_every", "checkpoint_every", "num_train_steps"):
        if config[name] <= 0:
            raise ValueError(f"{name} must be positive, got {config[name]}")
    optim.lr_schedule(config)  # unknown schedule -> ValueError
    models.from_config(config.model, classes)  # bad depth / field -> ValueError

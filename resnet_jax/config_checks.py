"""Settings that cannot run fail here, before anything is written, with a line that says what to do."""
from __future__ import annotations

from resnet_jax import data, finetune, models, optim

POSITIVE = ("batch_size", "eval_batch_size", "log_every", "eval_every", "checkpoint_every", "num_train_steps",
            "learning_rate")


def validate_config(config, num_devices: int) -> None:
    """Raises ValueError (one line, naming the flag) on a config that cannot train on `num_devices`."""
    if config.get("init_from"):
        finetune.check_init_from(config.init_from)  # a path that names nothing: before any data is read
    for name in POSITIVE:
        if not config[name] > 0:
            raise ValueError(f"{name} must be positive, got {config[name]} (--config.{name}=...)")
    if config.get("warmup_learning_rate") is not None and optim.uses_warmup(config) \
            and not config.warmup_learning_rate > 0:
        raise ValueError(f"warmup_learning_rate must be positive, got {config.warmup_learning_rate} "
                         "(--config.warmup_learning_rate=..., or --config.warmup=false)")
    if config.keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be at least 1, got {config.keep_checkpoints}: a run resumes from its "
                         "newest checkpoint (--config.keep_checkpoints=N; a large N keeps them all)")
    for name in ("momentum", "weight_decay"):
        if config[name] < 0:
            raise ValueError(f"{name} must not be negative, got {config[name]} (--config.{name}=...)")
    if config.get("diagnostics_every") and config.diagnostics_every < 0:
        raise ValueError(f"diagnostics_every must be >= 0 (0 = off), got {config.diagnostics_every}")
    classes = data.num_classes(config.dataset, config.get("num_classes"))
    for name in ("batch_size", "eval_batch_size"):
        if config[name] % num_devices:
            raise ValueError(f"{name} {config[name]} is not divisible by the {num_devices} devices; use a multiple of "
                             f"{num_devices} (--config.{name}=...)")
    group = config.model.bn_group_size
    if group and config.batch_size % group:
        raise ValueError(f"bn_group_size {group} must divide batch_size {config.batch_size} "
                         "(--config.model.bn_group_size=...; 0 = statistics over the whole batch)")
    optim.lr_schedule(config)  # unknown schedule -> ValueError
    models.from_config(config.model, classes)  # bad depth / field -> ValueError

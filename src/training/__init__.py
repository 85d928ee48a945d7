"""Training with Lightning: the ``LightningModule`` (``module``), optimizers and schedules (``optim``), what every
logger and the terminal show (``callbacks``), what only TensorBoard shows (``board``), the RNG state exact resumption
needs (``rng``), ``last.ckpt`` and signals (``last_checkpoint``), and the CLI the ``train`` entry point runs
(``cli``)."""

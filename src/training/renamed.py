"""What older configs, runs and checkpoints call by other names, and the values they trained with: config keys that
were renamed (refused with the new name), classes whose modules moved into packages (rewritten), and settings whose
default changed after checkpoints without them were written."""

from __future__ import annotations

from pathlib import Path

import yaml

from src.errors import UserError

# settings whose default changed after checkpoints without them were written: such a checkpoint trained with the
# value it had then (its hyper-parameters name every other setting)
BEFORE_THEIR_TIME = {"optimizer": "adamw", "value_residual": False, "mtp_weight": 0.0}
RENAMED = {"attention": "attention_maps", "data.strict": "data.strict_utf8"}  # old config keys -> new
# modules that moved into packages (2026-12): the class paths that older configs and runs' config.yaml name (a run's
# logger is src.board.TensorBoard), rewritten to the new modules before the CLI reads them
MOVED = {
    "src.corpus": "src.data.corpus",
    "src.tokenizer": "src.data.tokenizer",
    "src.token_cache": "src.data.token_cache",
    "src.dropout": "src.model.dropout",
    "src.sampling": "src.generation.sampling",
    "src.decoding": "src.generation.decoding",
    "src.checkpoint": "src.checkpoints.checkpoint",
    "src.build": "src.checkpoints.build",
    "src.pretrained": "src.checkpoints.pretrained",
    "src.module": "src.training.module",
    "src.optim": "src.training.optim",
    "src.callbacks": "src.training.callbacks",
    "src.board": "src.training.board",
    "src.rng": "src.training.rng",
    "src.last_checkpoint": "src.training.last_checkpoint",
    "src.engine": "src.serving.engine",
    "src.service": "src.serving.service",
    "src.serve_app": "src.serving.serve_app",
    "src.completions": "src.serving.completions",
}


def moved(name: str) -> str:
    """A class path at its module's new place (``src.board.TensorBoard`` -> ``src.training.board.TensorBoard``)."""
    module, _, cls = name.rpartition(".")
    return f"{MOVED[module]}.{cls}" if module in MOVED else name


def with_moved_classes(args: list[str]) -> list[str]:
    """``args`` with old class paths rewritten: in flags (``--trainer.logger=src.board.TensorBoard``) and in
    ``--config`` files, which are then given as their rewritten YAML text (the CLI takes a file or its contents)."""
    out, config_next = [], False
    for arg in args:
        flag, eq, value = arg.partition("=")
        if config_next or (flag == "--config" and eq):
            text = value if eq else arg
            rewritten = rewrite_classes(read_yaml(text))
            text = yaml.safe_dump(rewritten, sort_keys=False) if rewritten is not None else text
            out.append(f"--config={text}" if eq else text)
        elif flag.startswith("--") and eq and moved(value) != value:
            out.append(f"{flag}={moved(value)}")
        else:
            out.append(arg)
        config_next = arg == "--config"
    return out


def rewrite_classes(config) -> dict | None:
    """The config with every ``class_path`` at its module's new place, or None when none moved."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "class_path" and isinstance(value, str) and moved(value) != value:
                    node[key] = moved(value)
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    return config if found else None


def refuse_renamed(args: list[str]) -> None:
    """A clear error for a config key that has been renamed, given as a flag or in a --config file."""
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    configs = {path: read_yaml(path) for path in paths}
    for old, new in RENAMED.items():
        flags = [a for a in args if a == f"--{old}" or a.startswith((f"--{old}.", f"--{old}="))]
        if flags:
            raise UserError(
                f"{flags[0].split('=')[0]}: {old} is now called {new}; use --{new}"
                + flags[0][len(old) + 2 :].split("=")[0]
            )
        for path, config in configs.items():
            if has_key(config, old):
                raise UserError(f"{path}: the key {old} is now called {new}: rename it in the file")


def read_yaml(path: str):
    """The YAML file's contents, or None when it cannot be read (the CLI's own parser then says why)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def has_key(node, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True

"""A search space as a YAML file (``configs/tune/*.yaml``): config keys, each with a kind and a range, which a trial's
values become flags of ``fit`` (``--model.learning_rate=0.002``).

    model.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    model.n_layer: {type: int, low: 2, high: 6}
    model.n_embd: {type: categorical, choices: [64, 128, 192]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from src.errors import UserError

KINDS = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    key: str  # a config key, as fit's flags spell it without the dashes: model.learning_rate
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list:
        """Every value, for a grid search: the choices, or an int range's steps (a float range has no grid)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise UserError(f"{self.key}: a grid needs choices or an int range without log, not a {self.kind} range")


def load_space(path: str | Path, known_keys: set[str]) -> list[Param]:
    """The space in ``path``; every problem (unknown keys, kinds, ranges) named in one error."""
    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"--space {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"--space {path} is not valid YAML: {err}") from None
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"--space {path}: expected a mapping of config keys to ranges, e.g. {__doc__.splitlines()[3]}")
    params, problems = [], []
    for key, entry in spec.items():
        problem = check_entry(key, entry, known_keys)
        if problem:
            problems.append(f"{key}: {problem}")
            continue
        choices = tuple(entry["choices"]) if "choices" in entry else None
        params.append(Param(key, entry["type"], entry.get("low"), entry.get("high"), bool(entry.get("log", False)),
                            entry.get("step"), choices))  # fmt: skip
    if problems:
        raise UserError(f"--space {path}: " + "; ".join(problems))
    return params


def check_entry(key: str, entry: Any, known_keys: set[str]) -> str | None:
    """What is wrong with one entry of a space file, or None."""
    if key not in known_keys:
        near = sorted(k for k in known_keys if k.split(".")[-1] == str(key).split(".")[-1])
        return "not a config key of fit" + (f" (did you mean {', '.join(near)}?)" if near else "")
    if not isinstance(entry, dict) or entry.get("type") not in KINDS:
        return f"give a type: one of {', '.join(KINDS)}"
    unknown = set(entry) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
        return f"unknown fields {', '.join(sorted(unknown))}"
    if entry["type"] == "categorical":
        if not isinstance(entry.get("choices"), list) or not entry["choices"]:
            return "a categorical needs a non-empty list of choices"
        return None
    low, high = entry.get("low"), entry.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        return f"a {entry['type']} needs numbers low and high"
    if not low <= high:
        return f"low ({low}) must not exceed high ({high})"
    if entry.get("log") and low <= 0:
        return f"a log scale needs low > 0, got {low}"
    if entry["type"] == "int" and not (float(low).is_integer() and float(high).is_integer()):
        return f"an int range needs whole numbers, got {low} and {high}"
    return None


def flags(values: dict[str, Any]) -> list[str]:
    """A trial's values as fit's flags."""
    return [f"--{key}={value}" for key, value in values.items()]

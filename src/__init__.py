"""chargpt: a character-level GPT from "Let's build GPT", trained with PyTorch Lightning."""

__version__ = "0.1.0"

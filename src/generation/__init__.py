"""Turning a model into text: the next token from logits (``sampling``), the one token loop (``decoding``), and
cutting a stream at a stop text (``stop``)."""

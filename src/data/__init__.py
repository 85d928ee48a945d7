"""The data side: the corpus on disk (``corpus``), tokens (``tokenizer``), the encoded, memory-mapped corpus
(``token_cache``) and the ``LightningDataModule`` over it (``datamodule``). Imports no model, training or serving."""

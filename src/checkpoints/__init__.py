"""Models at rest: the checkpoint format (``checkpoint``), plain values to a model and back (``build``), the export
folder (``pretrained``), and loading either for decoding (``load``)."""

"""Inference with a trained checkpoint: predictions for new images and saved gallery indexes.

- :mod:`.inputs`: which images an ``inputs=`` path names (an image, a folder, a list file) and
  how one is decoded;
- :mod:`.checkpoint`: the module, classes and evaluation transform a checkpoint carries;
- :mod:`.embedder`: batched forward passes (logits, probabilities, embeddings), errors per item;
- :mod:`.fingerprint`: a checkpoint's identity, from its weights alone;
- :mod:`.gallery`: :class:`~.gallery.GalleryIndex` (save, load, exact or faiss search);
- :mod:`.splits`: a dataset split embedded as a gallery;
- :mod:`.records`: the ``predictions.jsonl`` rows and the output files.

Entry points: ``python -m ranking_reg.predict`` and ``python -m ranking_reg.index``.
"""

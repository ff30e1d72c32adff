"""The toy world and its shipped models.

``trainer.toy.world`` (captioned clips and their pixel readings) is plain data code at the bottom
of the layers: rewards and presets use it. ``trainer.toy.vae`` and ``trainer.toy.model`` are
scripts that train the shipped tiny VAE and toy Wan model with the engine (top layer). This
``__init__`` imports none of them.
"""

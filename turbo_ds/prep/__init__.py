"""Offline dataset preparation: raw videos + manifests -> WebDataset shards (turbo_ds schema).

The command lines under ``data_prep/`` (also ``python -m turbo_ds.prep.<tool>`` and the
``turbo-ds-*`` console scripts) run on this package. Training never imports it: the
training side reads what it writes through ``turbo_ds.data``.
"""

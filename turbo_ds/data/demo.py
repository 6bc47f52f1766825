"""TODO(merge): remove. train.py (owned by the training branch) still imports the demo generators from here;
at merge it imports them from turbo_ds.prep.demo and this file goes."""

from turbo_ds.prep.demo import generate_demo, generate_long_demo  # noqa: F401

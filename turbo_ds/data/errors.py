"""The one exception for bad input data, as opposed to bugs.

A sample raises ``DataError`` when its bytes cannot give what training needs (a video that
does not decode, a missing or unparsable member, no caption). The loader skips such a
sample and counts it; any other exception is a bug and propagates.
"""

from __future__ import annotations


class DataError(ValueError):
    """This sample's data is unusable; the message says why. A ValueError, as bad input is."""

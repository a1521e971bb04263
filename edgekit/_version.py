"""The one home of edgekit's version string.

A leaf module (imports nothing): code anywhere in edgekit, converters or calibration_data can read
the version without importing the ``edgekit`` package's ``__init__`` (which re-exports it).
"""

__version__ = "0.1.0"

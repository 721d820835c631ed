"""Benchmark of the traffic logger addon: ``make bench`` (``python -m bench``).

Not part of the test suite. All traffic stays on 127.0.0.1.
"""

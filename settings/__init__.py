"""Each component's settings model, `settings/<component>.py`, with the names and values of
it that other components read (a path, an account, the address of a service).

A leaf package: it imports infra/ and the runtime, never tasks/ or roles/, so one
component reads another's typed settings without importing the other's deploy code, and
the deploy's modules have no import circle (tests/unit/test_layering.py).
"""

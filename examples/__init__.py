"""Example use cases of Flywheel: their data feeds, simulations, demo and custom features.

The engine (``flywheel/``) never imports this package; the demo and the tests do.
"""

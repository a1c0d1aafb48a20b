"""The contracts between the parts of bookrec: model parameters, payloads, the serving model, the
tuner's study as the batch reads it, and URLs as they are shown.

This package is the bottom layer: it imports nothing else of bookrec, and every part may import it.
"""

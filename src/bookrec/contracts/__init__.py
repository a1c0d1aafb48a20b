"""The contracts between the parts of bookrec: model parameters, payloads and the serving model.

This package is the bottom layer: it imports nothing else of bookrec, and every part may import it.
"""

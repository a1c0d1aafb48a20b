"""bookrec.optimize"""

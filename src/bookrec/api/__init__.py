"""bookrec.api"""

"""bookrec.store"""

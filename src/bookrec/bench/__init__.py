"""bookrec.bench"""

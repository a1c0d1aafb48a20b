"""bookrec.batch"""

"""bookrec.data"""

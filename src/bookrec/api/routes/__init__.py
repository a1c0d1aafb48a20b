"""bookrec.api.routes"""

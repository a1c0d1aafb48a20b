"""bookrec.model"""

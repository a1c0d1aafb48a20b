"""bookrec.web"""

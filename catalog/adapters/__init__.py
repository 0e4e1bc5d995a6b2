"""catalog/adapters"""

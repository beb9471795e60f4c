"""pixels"""

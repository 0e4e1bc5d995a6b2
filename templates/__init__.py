"""Instruction templates and chat formats."""

"""Shapes-world fixtures written in other datasets' native annotation formats, one module per format."""

"""The shapes world: procedurally drawn scenes whose captions, questions, answers and boxes are true by construction."""

from .export import write_demo_data
from .server import PortInUseError, ShapesServer, serve_demo_world

__all__ = ["write_demo_data", "ShapesServer", "serve_demo_world", "PortInUseError"]

"""pipelines/shapes_world"""

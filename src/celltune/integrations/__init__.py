"""Bridges from celltune's outputs to other tools: QuPath GeoJSON, bioimage.io model packages.

Each module stands alone and is imported by its full name; nothing is imported here, so an
integration that needs an optional package costs nothing until it is used.
"""

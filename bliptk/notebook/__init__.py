"""Notebook explorers (ipywidgets)."""

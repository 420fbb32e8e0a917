"""Captioning over any runtime, torch-free: the backend every captioner is, folder jobs and Ray Data jobs."""

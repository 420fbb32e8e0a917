"""Captioning over any runtime, torch-free: the runtime registry and one `load` for all, the backend
every captioner is, folder-job options, folder jobs and Ray Data jobs."""

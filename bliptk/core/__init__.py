"""The torch-free core: tokenizing, preprocessing, files and videos, decoding, the captioning pipeline, provenance and errors. Nothing here imports torch or transformers."""

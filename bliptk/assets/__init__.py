"""Data shipped with bliptk: the real configs of both checkpoints, a tiny test config, and BERT's
uncased WordPiece vocabulary (Apache-2.0, Google), which both checkpoints use."""

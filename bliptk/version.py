"""bliptk's version, in one place: the package metadata (pyproject.toml reads it), ``bliptk.__version__``
and what bliptk writes into its outputs (export manifests, fine-tuning runs, figures) all take it from here."""

__version__ = "0.3.0"

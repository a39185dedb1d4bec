"""pcsym: symmetry-aware point-cloud classification with implicit steerable kernels."""

__version__ = "0.1.0"

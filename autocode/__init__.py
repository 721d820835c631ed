"""autocode: runtime for a self-hosted platform of autonomous coding agents."""
__version__ = "0.1.0"

"""leccr: cross-lingual cross-modal retrieval with multimodal-LLM descriptions."""

__version__ = "0.1.0"

"""Data preparation: MLLM descriptions, machine translation, the description-feature cache."""

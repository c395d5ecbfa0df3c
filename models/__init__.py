"""Transformer models and the attention variants they are built from."""

"""Developer tools: builders for tiny, offline test artefacts (tokenizers, checkpoints)."""

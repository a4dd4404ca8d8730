"""The Soprano model: Qwen3 backbone, Vocos decoder, and loading them from files."""

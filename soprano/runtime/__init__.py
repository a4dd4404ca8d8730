"""Generation runtime: sampling, the generation loop, streaming audio windows."""

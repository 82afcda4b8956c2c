"""The demo world: a generated miniature of the paper's setting with planted near-duplicates."""

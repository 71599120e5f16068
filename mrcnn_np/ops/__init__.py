"""Differentiable primitives: each op is a ``*_forward`` / ``*_backward`` pair."""

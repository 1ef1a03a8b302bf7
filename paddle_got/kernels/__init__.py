"""Our CPU kernels for shapes where Paddle's library kernels are slow (see each module)."""

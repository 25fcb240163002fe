"""FX graph passes that find linear-layer matmuls and rewrite them into quartet ops."""

"""OOD detection on hidden states: metrics, per-layer detectors, layer fusion and selection."""

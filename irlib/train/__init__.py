"""Training: configs and recipes (``config``), the engine (``engine``)."""

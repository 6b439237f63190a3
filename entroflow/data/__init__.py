"""Synthetic world generators and real-dataset loaders. Each module declares its Arrow schema."""

"""The local target: this machine plays the node. The MLflow server and its stores run as plain
processes (`stack`, `object_store`, `postgres`, `processes`), training uses a small Food-11-shaped
data set (`sample_data`), and `target` holds the local target's settings."""

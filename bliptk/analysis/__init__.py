"""What is made of captions and embeddings, torch-free: COCO caption metrics, feature-space maps and clusters."""

"""Where bliptk writes and what it reads back, torch-free: outputs and their locks, records and their formats, shards, COCO annotations."""

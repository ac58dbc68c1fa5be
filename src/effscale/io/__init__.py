"""Bytes on disk: atomic files, checkpoints, foreign weights, ONNX export."""

"""The servers `make bench` compares ours with, each on our model.onnx and handler.preprocessing."""

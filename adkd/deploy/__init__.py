"""Using a trained model: checkpoints read under trust rules, inference engines (PyTorch, ONNX
Runtime, OpenVINO), export formats, the operating point, predict, serve and submission writers."""

"""Serving the exported SavedModels: a TF Serving client and a wire-compatible local server.

* :mod:`kerascls.serving.client`: REST and gRPC client (``python -m kerascls.serving.client``);
* :mod:`kerascls.serving.server`: the local TF-Serving-compatible server
  (``python -m kerascls.serving.server``), built from :mod:`~kerascls.serving.manager` (versions,
  labels, loading), :mod:`~kerascls.serving.rest` (HTTP on aiohttp),
  :mod:`~kerascls.serving.jsonwire` (REST JSON), :mod:`~kerascls.serving.tensors` (TensorProto <->
  numpy, sizes checked first),
  :mod:`~kerascls.serving.batching` and :mod:`~kerascls.serving.metrics`;
* :mod:`kerascls.serving.protos`: TF Serving's gRPC messages without TensorFlow, for the client.

The deployment kit for the real ``tensorflow/serving`` image is the top-level ``serving/`` folder.
"""

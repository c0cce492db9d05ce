"""Serving the exported SavedModels: a TF Serving client and a wire-compatible local server.

* :mod:`kerascls.serving.client`: REST and gRPC client (``python -m kerascls.serving.client``);
* :mod:`kerascls.serving.server`: the local TF-Serving-compatible server
  (``python -m kerascls.serving.server``), built from :mod:`~kerascls.serving.manager` (versions,
  labels, loading), :mod:`~kerascls.serving.jsonwire` (REST JSON), :mod:`~kerascls.serving.batching`
  and :mod:`~kerascls.serving.metrics`.

The deployment kit for the real ``tensorflow/serving`` image is the top-level ``serving/`` folder.
"""

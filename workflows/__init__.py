"""Shared workflows (UI-format *.json here, API format in api/) and the Python that makes and runs them.

build.py generates every workflow from a compact description; graph.py turns a graph into the
graph editor's JSON and the API prompt; headless.py runs ComfyUI in-process; random_models.py
writes model files with random weights under the standard file names. Nothing here is imported
by the node pack itself.
"""

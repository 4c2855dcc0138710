"""The web UI (``steadydancer ui``): a Gradio app on the Python API (steadydancer/api.py)."""

"""Serving LLaVA: a controller that tracks model workers, the workers themselves, and command-line clients.

    python -m llava.serve.controller --port 21001
    python -m llava.serve.model_worker --controller-address http://127.0.0.1:21001 --port 21002 \\
        --worker-address http://127.0.0.1:21002 --model-path liuhaotian/llava-v1.5-7b
    python -m llava.serve.test_message --model-name llava-v1.5-7b --message "Hello"
    python -m llava.serve.cli --model-path liuhaotian/llava-v1.5-7b --image-file view.jpg

The HTTP API (JSON POST bodies; streams are JSON objects each followed by a NUL byte) is upstream LLaVA's, so
upstream clients and web servers work unchanged. Importing this package imports nothing heavy.
"""

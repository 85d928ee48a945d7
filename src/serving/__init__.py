"""Serving over HTTP: continuous batching (``engine``), the service between the engine and HTTP (``service``), the
routes (``serve_app``), OpenAI's request and response shapes (``completions``) and the web page
(``playground.html``)."""

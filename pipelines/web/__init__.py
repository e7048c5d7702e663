"""The operator's web view: live cameras, the alert history, verdicts (``ui`` section).

- :mod:`pipelines.web.live`: the live state the service feeds and the page reads;
- :mod:`pipelines.web.app`: the FastAPI application (pages, JSON API, server-sent events);
- :mod:`pipelines.web.render`: the skeleton and the score plot as inline SVG;
- :mod:`pipelines.web.server`: uvicorn on a thread of a service (:func:`start_ui`).

Templates and static files (plain HTML, CSS and a little JavaScript: no build step, nothing
downloaded at run time) live beside the modules.
"""

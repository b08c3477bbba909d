"""The web app: FastAPI + Jinja2 templates + htmx + plotly, over the store and the engine."""

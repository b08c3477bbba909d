from patchstudio.web.methods.base import WebMethod, direction_phrase

WEB = WebMethod(
    name="activation_patching",
    label="activation patching",
    fields=("component", "positions", "positions_at", "direction"),
    claim=lambda spec: f"activation patching ({direction_phrase(spec)})",
)

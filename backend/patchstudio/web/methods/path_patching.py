from patchstudio.web.methods.base import WebMethod, direction_phrase


def claim(spec) -> str:
    to = ", ".join(f"L{r.layer}H{r.head}.{r.input}" for r in spec.receivers) or "the logits"
    return f"path patching from each head to {to} ({direction_phrase(spec)})"


WEB = WebMethod(
    name="path_patching",
    label="path patching (heads → receivers)",
    fields=("direction", "receivers"),
    claim=claim,
)
